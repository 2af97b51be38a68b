#!/usr/bin/env bash
# Compare the two training recipes (paper vs the authors' public code) on the shared OpenKBP patients:
# md-dose `small`, 64² slices, 4 epochs or 8 minutes each (CPU-sized), validation dose score (MAE in Gy
# inside the possible-dose mask of the 8 validation patients, 32 slices each, DPM-Solver++ 10 steps).
# Run from the repository root:  src/mddose/bench/scripts/compare_recipes.sh [OUT_DIR]
set -euo pipefail
out=${1:-runs/recipes}
for recipe in paper public; do
  rm -rf "$out/$recipe"
  mddose train --config "src/mddose/bench/scripts/recipes/$recipe.json" --out "$out/$recipe" --no-progress
done
for recipe in paper public; do
  echo "== $recipe: validation dose score by epoch"; cat "$out/$recipe/logs/val.csv"
  echo "   last training rows:"; tail -n 2 "$out/$recipe/logs/train.csv"
done
