"""PSNR (dB, 8-bit RGB) between pairs of images of the same size: the quality cost of a lower-precision image against
the float32 one of the same seed (`--precision int8` vs `--precision f32`, docs/benchmarks.md).

Usage: /work/venv/bin/python tools/eval/psnr.py REFERENCE.png OTHER.png [REFERENCE2.png OTHER2.png ...]
Prints one line per pair: PSNR, max absolute pixel difference, and for batches the mean over the pairs.
"""
import sys

import numpy as np
from PIL import Image


def psnr(a, b):
    x = np.asarray(Image.open(a).convert("RGB"), dtype=np.float64)
    y = np.asarray(Image.open(b).convert("RGB"), dtype=np.float64)
    if x.shape != y.shape:
        sys.exit(f"{a} is {x.shape}, {b} is {y.shape}: not the same size")
    mse = np.mean((x - y) ** 2)
    return (float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)), int(np.abs(x - y).max())


args = sys.argv[1:]
if len(args) < 2 or len(args) % 2:
    sys.exit(__doc__)
values = []
for ref, other in zip(args[0::2], args[1::2]):
    p, m = psnr(ref, other)
    values.append(p)
    print(f"{other} vs {ref}: PSNR {p:.2f} dB, max |diff| {m}")
if len(values) > 1:
    print(f"mean PSNR {np.mean(values):.2f} dB over {len(values)} pairs")
