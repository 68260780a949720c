#!/usr/bin/env bash
# Create .venv (once) and install torch, then dsocr with its test dependencies.
# torch goes first, pinned to the CPU build this project is tested with, so that the project's
# range (torch>=2.6) is already satisfied and pip never pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_VERSION=${DSOCR_TORCH_VERSION:-2.13.0}
stamp=.venv/.dsocr-setup
want="$(cat pyproject.toml | sha256sum | cut -c1-16)-torch-$TORCH_VERSION"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check "torch==$TORCH_VERSION"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
echo "$want" > "$stamp"
