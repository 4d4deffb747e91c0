#!/bin/bash
# Judge a shapes pipeline with and without the diamond LoRA as docs/results.md ("Teaching models/shapes a new
# concept with a LoRA") does: DDIM 50, guidance 4, 4 samples per prompt, seed = prompt index; the 36 held-out diamond
# prompts without and with the LoRA, and the base's held-out prompts with the LoRA.
# Usage: experiments/shapes22/judge_lora.sh MODEL_DIR LORA_FILE OUT_DIR [sets...]
#   (sets: diamond-base diamond-lora shapes-lora; default all)
# Needs: LDM (default /work/bin/ldm), PY (default /work/venv/bin/python), data/shapes/heldout from tools/data/shapes.py
# and data/shapes-diamond/heldout from tools/data/shapes_concept.py --concept diamond (commands in docs/results.md).
set -euo pipefail
M=$1; L=$2; O=$3; shift 3; SETS=${*:-diamond-base diamond-lora shapes-lora}
LDM=${LDM:-/work/bin/ldm}; PY=${PY:-/work/venv/bin/python}
# One thread: on a shared 2-core machine the default (2 threads) was 9x slower per step, with the same images.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$O"
for set in $SETS; do
  case $set in
    diamond-base) P=data/shapes-diamond/heldout; X=() ;;
    diamond-lora) P=data/shapes-diamond/heldout; X=(--lora "$L") ;;
    shapes-lora) P=data/shapes/heldout; X=(--lora "$L") ;;
    *) echo "unknown set $set" >&2; exit 2 ;;
  esac
  rm -rf "$O/samples-$set"; mkdir -p "$O/samples-$set"; i=0
  while read -r p; do
    $LDM txt2img --model "$M" --prompt "$p" --batch-size 4 --steps 50 --sampler ddim --cfg-scale 4 --seed $i --quiet \
        --output "$O/samples-$set/$(printf %05d $i).png" "${X[@]}"
    i=$((i+1))
  done < "$P/prompts.txt"
  echo "== $set"
  $PY tools/eval/shapes_eval.py --samples "$O/samples-$set" --labels "$P/labels.json" --json "$O/eval-$set.json" | tail -6
done
