#!/usr/bin/env bash
# Stage 1 in minutes on a CPU: train a tiny DeepEncoder + compact LM from random weights on
# synthetic pages (256x128, a title of 1-3 words from 8 words, one font), then score held-out
# pages with the untrained and the trained model.
#   bash scripts/synthetic_experiment.sh [OUT_DIR] [STEPS]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
out=$(realpath -m "${1:-runs/synthetic-experiment}")
steps=${2:-800}
dsocr=.venv/bin/dsocr
pages=(--task free --width 256 --height 128 --font-size 28 28 --fonts sans --no-lists --no-tables --digits 0 --punctuation 0 --vocabulary 8)
rm -rf "$out"
"$dsocr" synth "$out/train" -n 2000 --seed 1 "${pages[@]}"
"$dsocr" synth "$out/heldout" -n 100 --seed 2 "${pages[@]}"
data="data.manifests=[\"$out/train/manifest.jsonl\"]"
# the untrained model: one step at a negligible learning rate writes the initial weights as a checkpoint
"$dsocr" train configs/synthetic.toml --out "$out/untrained" --set "$data" --set max_steps=1 --set optim.lr=1e-30
"$dsocr" train configs/synthetic.toml --out "$out/trained" --set "$data" --set max_steps="$steps"
for run in untrained trained; do
  model=$(ls -d "$out/$run"/checkpoints/step-*/model | tail -1)
  "$dsocr" eval --model "$model" --data "$out/heldout/manifest.jsonl" --mode tiny --max-new-tokens 40 \
    --out "$out/eval-$run" > "$out/eval-$run.log"
  echo "== $run ($model)"; cat "$out/eval-$run/report.txt"
done
