#!/usr/bin/env bash
# Set up (if needed) and run the main job on the example page shipped in the repository:
#   1. DeepEncoder: examples/page.png -> vision tokens (count and timing printed);
#   2. OCR: examples/page.png -> Markdown, layout boxes and a drawn page under out/ocr/.
# Real weights: DSOCR_MODEL (a DeepSeek-OCR directory or hub id, e.g. deepseek-ai/DeepSeek-OCR).
# Without it the job runs offline on a small random-weight model in the official layout: the
# machinery is real, the text is meaningless.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
mkdir -p out
model=${DSOCR_MODEL:-}
tokens=${DSOCR_MAX_NEW_TOKENS:-8192}
if [ -z "$model" ]; then
  echo "DSOCR_MODEL is not set: using a small random-weight model (set DSOCR_MODEL=deepseek-ai/DeepSeek-OCR for real OCR)"
  [ -f out/random-model/config.json ] || .venv/bin/python scripts/random_model.py out/random-model
  model=out/random-model
  tokens=${DSOCR_MAX_NEW_TOKENS:-48}
fi
.venv/bin/dsocr encode examples/page.png --weights "$model" --mode "${DSOCR_MODE:-base}" --out out/page.tokens.safetensors
.venv/bin/dsocr ocr examples/page.png -o out/ocr --model "$model" --mode "${DSOCR_MODE:-base}" --max-new-tokens "$tokens" --force
echo "results: out/ocr/page/ (page-0001.md, .json, .png, .raw.txt) and out/page.tokens.safetensors"
