#!/usr/bin/env bash
# Stage 1 in minutes on a CPU: train a tiny DeepEncoder + compact LM from random weights on
# synthetic pages, then score held-out pages with the untrained and the trained model.
#   bash scripts/synthetic_experiment.sh [OUT_DIR] [STEPS]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
out=$(realpath -m "${1:-runs/synthetic-experiment}")
steps=${2:-600}
dsocr=.venv/bin/dsocr
pages=(--task free --width 384 --height 256 --font-size 24 30 --no-lists --no-tables --digits 0 --punctuation 0 --vocabulary 24)
rm -rf "$out"
"$dsocr" synth "$out/train" -n 400 --seed 1 "${pages[@]}"
"$dsocr" synth "$out/heldout" -n 30 --seed 2 "${pages[@]}"
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
