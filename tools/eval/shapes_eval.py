# The shapes judge: a deterministic analyser that reads colour, shape, size and position back from an image of one
# shape on a white background (tools/data/shapes.py), and scores text-to-image samples against the prompts' labels.
#  - Analyser (no learning; works at any image size): upsample to 128x128 (bilinear); ink = 1 - min(R,G,B)/255;
#    mask = ink > 0.4; keep the largest 8-connected component (drops speckles). Colour: mean RGB of the component's
#    core (ink > 0.7, else the whole component) -> nearest palette colour in CIELAB. Position: ink-weighted
#    centroid of the component -> cell of the 3x3 grid. Shape and size: template fit at the sample's resolution:
#    each kind (of labels.json's "kinds") is drawn by shapes.py's own code (4x supersampled, BOX-downsampled),
#    centred on the centroid, at 7 sides (0.85..1.45 x the thresholded bounding box) and 4 blurs (Gaussian sigma
#    0..1.5 px); the kind whose best template has the least squared difference to the ink coverage (ink / core
#    ink, near the component) wins, and its fitted side / image side > 0.253 means large (renders: small 0.20,
#    large 0.32). No ink: all four attributes are wrong.
#  - Self-check (printed first as "analyser self-check"): the analyser on clean renders (seeded jittered renders of
#    every labels.json entry: 3 each for up to 200 entries, else 1; at the labels' image size); it should be ~100%.
#  - Samples: DIR/NNNNN.png or DIR/NNNNN-J.png (the files of `ldm txt2img --output DIR/NNNNN.png --batch-size B`)
#    are scored against labels.json entry "NNNNN" (the text before the first "-" of the file stem).
#    labels.json: {"image_size": S, "kinds": [...], "labels": {"NNNNN": {"caption", "color", "shape", "size",
#    "position"}}, optional "extra_colors": {name: [r, g, b]} added to the palette} as written by tools/data/shapes.py (--heldout-out DIR2/labels.json for the held-out prompts;
#    DIR/labels.json for the training images, so `--samples DIR --labels DIR/labels.json` checks the dataset itself).
#  - Reports per-attribute accuracy (colour, shape, size, position) and all-four-correct accuracy; --json writes them
#    with the per-file readings.
# Run: /work/venv/bin/python tools/eval/shapes_eval.py --samples DIR --labels labels.json [--json out.json]
import argparse
import glob
import json
import os
import random
import sys

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage
from skimage.color import rgb2lab
from skimage.measure import regionprops

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data"))
import shapes  # noqa: E402  (tools/data/shapes.py: palette, positions, renderer)

ATTRS = ["color", "shape", "size", "position"]
WORK = 128
PALETTE_NAMES = list(shapes.COLORS)
PALETTE_LAB = rgb2lab(np.array([shapes.COLORS[c] for c in PALETTE_NAMES], dtype=np.float64)[None] / 255.0)[0]
SIZE_THRESHOLD = float(np.sqrt(shapes.SIDE["small"] * shapes.SIDE["large"]))


SCALES = [0.85, 0.95, 1.05, 1.15, 1.25, 1.35, 1.45]  # template side / thresholded bounding-box side
SIGMAS = [0.0, 0.5, 1.0, 1.5]                        # template blur, pixels of the sample


def analyse(img, kinds=shapes.KINDS):
    """PIL image -> {"color", "shape", "size", "position"} (None values when no shape is found) + measurements."""
    img = img.convert("RGB")
    native = np.asarray(img, dtype=np.float64)
    if img.size != (WORK, WORK):
        img = img.resize((WORK, WORK), Image.BILINEAR)
    a = np.asarray(img, dtype=np.float64)
    ink = 1.0 - a.min(axis=2) / 255.0
    lab, n = ndimage.label(ink > 0.4, structure=np.ones((3, 3)))
    if n == 0:
        return {k: None for k in ATTRS}
    areas = ndimage.sum(np.ones_like(ink), lab, index=range(1, n + 1))
    comp = lab == (1 + int(np.argmax(areas)))
    core = comp & (ink > 0.7)
    rgb = a[core if core.sum() >= 4 else comp].mean(axis=0)
    lab_c = rgb2lab(rgb[None, None] / 255.0)[0, 0]
    color = PALETTE_NAMES[int(np.argmin(((PALETTE_LAB - lab_c) ** 2).sum(axis=1)))]
    props = regionprops(comp.astype(np.uint8))[0]
    r0, c0, r1, c1 = props.bbox
    bw, bh = (c1 - c0) / WORK, (r1 - r0) / WORK  # fractions of the image side
    cy, cx = ndimage.center_of_mass(ink * comp)
    cx, cy = (cx + 0.5) / WORK, (cy + 0.5) / WORK
    # Shape and size: least-squares fit of each kind's template (side, blur) to the ink coverage, at the sample's size.
    ref = float(ink[core].mean()) if core.sum() >= 4 else float(ink[comp].max())
    h, w = native.shape[:2]
    region = np.asarray(Image.fromarray(comp.astype(np.uint8) * 255).resize((w, h), Image.BOX)) > 0
    region = ndimage.binary_dilation(region, np.ones((3, 3)), iterations=3)
    cover = np.clip((1.0 - native.min(axis=2) / 255.0) / max(ref, 1e-6), 0, 1) * region
    fits = {}
    for kind in kinds:
        best = None
        for s in SCALES:
            t = template(kind, cx, cy, s * bw, s * bh, w, h)
            for sigma in SIGMAS:
                e = float(((cover - (ndimage.gaussian_filter(t, sigma) if sigma else t)) ** 2).mean())
                if best is None or e < best[0]:
                    best = (e, s * max(bw, bh), sigma)
        fits[kind] = best
    shape = min(kinds, key=lambda k: fits[k][0])
    side = fits[shape][1]
    size = "large" if side > SIZE_THRESHOLD else "small"
    row, col = min(2, int(3 * cy)), min(2, int(3 * cx))
    return {"color": color, "shape": shape, "size": size, "position": shapes.POSITIONS[row * 3 + col],
            "measured": {"rgb": [round(float(v), 1) for v in rgb], "bbox_side": round(max(bw, bh), 3),
                         "fit_error": {k: round(v[0], 5) for k, v in fits.items()}, "fit_side": round(side, 3),
                         "fit_blur": fits[shape][2], "centroid": [round(float(cx), 3), round(float(cy), 3)]}}


def extend_palette(extra):
    """Adds labels.json's "extra_colors" ({name: [r, g, b]}, e.g. a colour taught by a LoRA,
    tools/data/shapes_concept.py) to the palette the analyser picks from (and the self-check renders)."""
    global PALETTE_NAMES, PALETTE_LAB
    for name, rgb in extra.items():
        shapes.COLORS[name] = tuple(int(v) for v in rgb)
    PALETTE_NAMES = list(shapes.COLORS)
    PALETTE_LAB = rgb2lab(np.array([shapes.COLORS[c] for c in PALETTE_NAMES], dtype=np.float64)[None] / 255.0)[0]


def template(kind, cx, cy, bw, bh, w, h):
    """Coverage (0..1, h x w) of `kind` drawn by shapes.py's code (4x supersampled, BOX-downsampled) in a box of
    bw x bh (fractions of the image side) whose shape centroid is at (cx, cy)."""
    ss = shapes.SUPERSAMPLE
    if kind == "triangle":  # centroid is a sixth of the height below the box centre
        cy -= bh / 6
    img = Image.new("L", (w * ss, h * ss), 0)
    x0, x1 = (cx - bw / 2) * w * ss, (cx + bw / 2) * w * ss
    y0, y1 = (cy - bh / 2) * h * ss, (cy + bh / 2) * h * ss
    shapes.draw_shape(ImageDraw.Draw(img), kind, x0, y0, x1, y1, 255)
    return np.asarray(img.resize((w, h), Image.BOX), dtype=np.float64) / 255.0


def score(pairs):
    """[(reading, label)] -> {attr: accuracy, "all": accuracy}."""
    n = max(1, len(pairs))
    out = {k: sum(r[k] == l[k] for r, l in pairs) / n for k in ATTRS}
    out["all"] = sum(all(r[k] == l[k] for k in ATTRS) for r, l in pairs) / n
    return out


def self_check(labels, image_size, kinds, seed=0):
    repeats = 3 if len(labels) <= 200 else 1
    rng = random.Random(seed)
    pairs = []
    for key in sorted(labels):
        l = labels[key]
        for _ in range(repeats):
            img = shapes.render(l["color"], l["shape"], l["size"], l["position"], image_size, rng)
            pairs.append((analyse(img, kinds), l))
    return score(pairs), len(pairs)


def fmt(s):
    return "  ".join("%s %5.1f%%" % (k, 100 * s[k]) for k in ATTRS + ["all"])


def main():
    ap = argparse.ArgumentParser(description="Score coloured-shape samples against their prompts' attributes.")
    ap.add_argument("--samples", required=True, help="folder of NNNNN.png / NNNNN-J.png samples")
    ap.add_argument("--labels", required=True, help="labels.json from tools/data/shapes.py")
    ap.add_argument("--json", help="write the figures (and per-file readings) here")
    ap.add_argument("--self-check-size", type=int, help="image size of the self-check renders (default: labels.json's)")
    args = ap.parse_args()
    with open(args.labels) as f:
        meta = json.load(f)
    labels = meta["labels"] if "labels" in meta else meta
    image_size = args.self_check_size or meta.get("image_size", 32)

    kinds = meta.get("kinds", shapes.KINDS)
    extend_palette(meta.get("extra_colors", {}))
    check, n_check = self_check(labels, image_size, kinds)
    print("analyser self-check (%d clean %dx%d renders): %s" % (n_check, image_size, image_size, fmt(check)))

    files = sorted(glob.glob(os.path.join(args.samples, "*.png")))
    pairs, per_file, unmatched = [], {}, []
    for p in files:
        key = os.path.splitext(os.path.basename(p))[0].split("-")[0]
        if key not in labels:
            unmatched.append(p)
            continue
        r = analyse(Image.open(p), kinds)
        pairs.append((r, labels[key]))
        per_file[os.path.basename(p)] = {"label": key, "caption": labels[key].get("caption"),
                                         "read": {k: r[k] for k in ATTRS}, "measured": r.get("measured"),
                                         "correct": {k: r[k] == labels[key][k] for k in ATTRS}}
    if unmatched:
        print("warning: %d files match no labels.json key (e.g. %s)" % (len(unmatched), unmatched[0]))
    if not pairs:
        sys.exit("no samples in %s match %s" % (args.samples, args.labels))
    s = score(pairs)
    prompts = sorted({v["label"] for v in per_file.values()})
    print("samples: %d files for %d prompts" % (len(pairs), len(prompts)))
    print("%-9s %9s" % ("attribute", "accuracy"))
    for k in ATTRS + ["all"]:
        print("%-9s %8.1f%%" % (k, 100 * s[k]))
    confusion = {}
    for k in ATTRS:
        c = {}
        for r, l in pairs:
            c.setdefault(l[k], {}).setdefault(str(r[k]), 0)
            c[l[k]][str(r[k])] += 1
        confusion[k] = c
    out = {"samples_dir": args.samples, "labels": args.labels, "num_samples": len(pairs), "num_prompts": len(prompts),
           "accuracy": s, "self_check": check, "self_check_renders": n_check, "confusion": confusion,
           "files": per_file, "unmatched_files": unmatched}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
        print("wrote", args.json)


if __name__ == "__main__":
    main()
