#!/usr/bin/env bash
# Set up (if needed) and run the main job: encode the example page with DeepEncoder.
# Weights: $DSOCR_WEIGHTS (a DeepSeek-OCR checkpoint directory or file, a `dsocr convert` output,
# or a hub id such as deepseek-ai/DeepSeek-OCR); without it, random weights (timing only).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
mkdir -p out
exec .venv/bin/dsocr encode examples/page.png --weights "${DSOCR_WEIGHTS:-random}" --mode "${DSOCR_MODE:-base}" \
  --out out/page.tokens.safetensors "$@"
