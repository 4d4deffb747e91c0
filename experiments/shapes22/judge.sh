#!/bin/bash
# Judge a shapes pipeline (issue 22) as docs/results.md does: DDIM 50, guidance 4, 4 samples per prompt, seed = prompt
# index; held-out captions, 62 seen captions, and the README prompt with seeds 0-7.
# Usage: experiments/shapes22/judge.sh MODEL_DIR OUT_DIR [sets...]   (sets: heldout seen readme; default all)
# Needs: LDM (default /work/bin/ldm), PY (default /work/venv/bin/python), data/shapes/heldout from tools/data/shapes.py.
set -euo pipefail
M=$1; O=$2; shift 2; SETS=${*:-heldout seen readme}
LDM=${LDM:-/work/bin/ldm}; PY=${PY:-/work/venv/bin/python}
# One thread: on a shared 2-core machine the default (2 threads) was 9x slower per step, with the same images.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$O"
[ -f "$O/seen/prompts.txt" ] || $PY tools/eval/shapes_diagnosis.py prompts --out "$O/seen" > /dev/null
[ -f "$O/readme/prompts.txt" ] || $PY tools/eval/shapes_diagnosis.py repeat --out "$O/readme" --count 8 \
    --caption "a large red circle in the top left corner on a white background" > /dev/null
for set in $SETS; do
  if [ $set = heldout ]; then P=data/shapes/heldout; else P=$O/$set; fi
  rm -rf "$O/samples-$set"; mkdir -p "$O/samples-$set"; i=0
  while read -r p; do
    if [ $set = readme ]; then b=1; s=$i; else b=4; s=$i; fi
    $LDM txt2img --model "$M" --prompt "$p" --batch-size $b --steps 50 --sampler ddim --cfg-scale 4 --seed $s --quiet \
        --output "$O/samples-$set/$(printf %05d $i).png"
    i=$((i+1))
  done < "$P/prompts.txt"
  $PY tools/eval/shapes_eval.py --samples "$O/samples-$set" --labels "$P/labels.json" --json "$O/eval-$set.json" | tail -6
done
