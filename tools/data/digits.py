# Prepares scikit-learn's 1,797 real 8x8 handwritten digits (UCI optdigits test set, shipped inside the sklearn wheel as
# sklearn/datasets/data/digits.csv.gz and read by sklearn.datasets.load_digits; no network) as an image folder for
# `ldm train` with conditioning "class" (class = sorted sub-folder name, "0".."9").
#  - Split: stratified, seeded (sklearn.model_selection.train_test_split, random_state=0, test_size=297):
#    1,500 train / 297 held-out test images; DIR/split.json lists the load_digits indices of each file.
#  - Images: values 0..16 -> 0..255 (v*255/16, rounded, clamped), white ink on black, upsampled from 8x8 to
#    SIZE x SIZE with PIL bicubic (output clamped to 0..255 by PIL), saved as RGB PNG (grey replicated).
#  - Layout: DIR/train/<digit>/NNNN.png and DIR/test/<digit>/NNNN.png, NNNN = the load_digits index (zero-padded).
# Deterministic: same files on every run.
# Run: /work/venv/bin/python tools/data/digits.py --out DIR [--size 32]
import argparse
import json
import os

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

SEED = 0
TEST_SIZE = 297


def split_indices():
    """(train_indices, test_indices) into load_digits(), stratified by digit, seeded; sorted."""
    d = load_digits()
    idx = np.arange(len(d.target))
    tr, te = train_test_split(idx, test_size=TEST_SIZE, random_state=SEED, stratify=d.target)
    return np.sort(tr), np.sort(te)


def to_image(values8x8, size):
    """8x8 array of 0..16 -> RGB PIL image size x size (bicubic)."""
    a = np.clip(np.rint(np.asarray(values8x8, dtype=np.float64) * 255.0 / 16.0), 0, 255).astype(np.uint8)
    img = Image.fromarray(a, mode="L")
    if size != 8:
        img = img.resize((size, size), Image.BICUBIC)
    return img.convert("RGB")


def main():
    ap = argparse.ArgumentParser(description="Write sklearn's real 8x8 digits as a train/test PNG image folder.")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--size", type=int, default=32, help="image side in pixels (default 32)")
    args = ap.parse_args()
    if args.size < 8:
        ap.error("--size must be >= 8")
    d = load_digits()
    tr, te = split_indices()
    split = {"source": "sklearn.datasets.load_digits", "seed": SEED, "size": args.size,
             "train": [int(i) for i in tr], "test": [int(i) for i in te],
             "train_labels": [int(d.target[i]) for i in tr], "test_labels": [int(d.target[i]) for i in te]}
    for name, indices in (("train", tr), ("test", te)):
        for i in indices:
            folder = os.path.join(args.out, name, str(int(d.target[i])))
            os.makedirs(folder, exist_ok=True)
            to_image(d.images[i], args.size).save(os.path.join(folder, "%04d.png" % i))
    with open(os.path.join(args.out, "split.json"), "w") as f:
        json.dump(split, f, indent=1)
    counts = np.bincount(d.target[tr], minlength=10).tolist(), np.bincount(d.target[te], minlength=10).tolist()
    print("wrote %d train / %d test images (%dx%d) to %s" % (len(tr), len(te), args.size, args.size, args.out))
    print("train per digit:", counts[0])
    print("test per digit: ", counts[1])


if __name__ == "__main__":
    main()
