#!/usr/bin/env bash
# Loopback scaling of data-parallel training (docs/training.md): the digits-sized LDM (models/digits UNet config,
# 4.0 M parameters, batch 64 of 8x8 latents through models/digits/vae, cached) and the digits-sized KL autoencoder
# (0.95 M parameters, batch 16 of 32x32 images), each run three ways: one process on one thread, one process on all
# threads, and `mpirun -np 2` (mpirun binds each rank to one core) with the gradient all-reduce overlapped with
# backward (the default) and after it (--no-overlap). Prints steps/s and the all-reduce time not hidden by backward.
# Usage: tools/bench/data_parallel_loopback.sh [WORK_DIR]   (needs a release build, Open MPI, and a Python with
# numpy + pillow in $PYTHON, default python3, to write 130 random 32x32 PNGs in 10 class folders).
# LDM=path/to/ldm picks another build; KINDS="ldm ae" and MODES="..." pick the runs; REPEAT=N repeats each;
# BUCKET_MB=X sets the ranks' --bucket-cap-mb (default 25, DDP's).
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
work=${1:-$(mktemp -d)}
ldm=${LDM:-$repo/.build/release/ldm}
mpirun="mpirun --allow-run-as-root"
mkdir -p "$work" && cd "$work"
"${PYTHON:-python3}" - "$repo" <<'PY'
import json, os, sys
import numpy as np
from PIL import Image
repo = sys.argv[1]
rng = np.random.default_rng(0)
for c in range(10):
    os.makedirs(f"data/{c}", exist_ok=True)
    for i in range(13):
        Image.fromarray((rng.random((32, 32, 3)) * 255).astype(np.uint8)).save(f"data/{c}/{i}.png")
data = os.path.abspath("data")
ldm = json.load(open(f"{repo}/models/digits/training/ldm.json"))
ldm.update(first_stage=f"{repo}/models/digits/vae", data_dir=data, batch_size=64, max_steps=30, ckpt_every=1000, cache_latents=True)
ae = json.load(open(f"{repo}/models/digits/training/autoencoder.json"))
ae.update(data_dir=data, batch_size=16, max_steps=12, ckpt_every=1000)
for c in (ldm, ae):
    for k in ("sample_every", "run_dir"): c.pop(k, None)
json.dump(ldm, open("ldm.json", "w"), indent=1)
json.dump(ae, open("ae.json", "w"), indent=1)
PY
for kind in ${KINDS:-ldm ae}; do
  cmd="train ldm"; [ $kind = ae ] && cmd="train autoencoder"
  for round in $(seq ${REPEAT:-1}); do
  for mode in ${MODES:-1-process-1-thread 1-process-all-threads mpirun-np-2 mpirun-np-2-no-overlap}; do
    rm -rf "runs/$kind-$mode"
    args=($cmd --config $kind.json --run-dir runs/$kind-$mode --log-every 1000)
    case $mode in
      1-process-1-thread) OMP_NUM_THREADS=1 $ldm "${args[@]}" ;;
      1-process-all-threads) $ldm "${args[@]}" ;;
      mpirun-np-2) $mpirun -np 2 $ldm "${args[@]}" --bucket-cap-mb ${BUCKET_MB:-25} ;;
      mpirun-np-2-no-overlap) $mpirun -np 2 $ldm "${args[@]}" --bucket-cap-mb ${BUCKET_MB:-25} --no-overlap ;;
    esac 2>&1 | grep -E "steps/s|error|failed" | sed "s/^/$kind $mode: /"
  done
  done
done
