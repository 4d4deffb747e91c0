# Renders a procedurally generated captioned dataset of coloured shapes for text-conditional `ldm train`
# (an image folder: DIR/NNNNN.png with its caption in DIR/NNNNN.txt, no sub-folders).
#  - One shape per image on a white background: kind (circle, square, triangle, cross; --kinds picks a subset),
#    size (small, large), colour (red, green, blue, yellow, purple, orange) and position (a 3x3 grid: top left ...
#    bottom right). Caption: "a small red circle in the top left corner on a white background" (positions: "in the
#    top left corner", "at the top", "in the top right corner", "on the left", "in the center", "on the right",
#    "in the bottom left corner", "at the bottom", "in the bottom right corner").
#  - Mild seeded jitter so images are not duplicates: centre +-3% of the side, size +-6%, colour +-12 per channel.
#    The shape is drawn at 4x with PIL and BOX-downsampled (area antialiasing).
#  - Held-out combinations: a fixed 1/7 (~14%) of the (colour, kind, position) triples, chosen by a modular rule
#    (balanced over each attribute; the same for every --seed / --count / --size, given --kinds; every pair of
#    attributes still occurs in training), never appear in DIR. --heldout-out DIR2 writes DIR2/prompts.txt (one
#    caption per line: every held-out triple in both sizes) and DIR2/labels.json (the attributes of line i under
#    key "%05d" % i, for tools/eval/shapes_eval.py).
#  - DIR/labels.json holds the attributes of every training image (key = file stem), for the analyser self-check.
# Deterministic given --count, --seed, --size, --kinds. Run:
#   /work/venv/bin/python tools/data/shapes.py --out DIR --count N --seed S [--size 32] [--kinds circle,square,triangle]
#       [--heldout-out DIR2]
import argparse
import itertools
import json
import os
import random

import numpy as np
from PIL import Image, ImageDraw

KINDS = ["circle", "square", "triangle", "cross"]
SIZES = ["small", "large"]
COLORS = {  # name -> RGB
    "red": (220, 30, 30), "green": (30, 160, 50), "blue": (30, 70, 220),
    "yellow": (240, 210, 0), "purple": (140, 40, 180), "orange": (250, 130, 0)}
POSITIONS = ["top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right"]
PHRASES = {"top left": "in the top left corner", "top": "at the top", "top right": "in the top right corner",
           "left": "on the left", "center": "in the center", "right": "on the right",
           "bottom left": "in the bottom left corner", "bottom": "at the bottom",
           "bottom right": "in the bottom right corner"}
SIDE = {"small": 0.20, "large": 0.32}  # bounding-box side as a fraction of the image side
SUPERSAMPLE = 4


def caption(color, kind, size, position):
    return "a %s %s %s %s on a white background" % (size, color, kind, PHRASES[position])


def heldout_triples(kinds=KINDS):
    """The held-out (colour, kind, position) triples: those with (colour index + 2 * kind index + position index)
    divisible by 7 (1/7 of them, ~14%, balanced over each attribute); every attribute pair still occurs in training."""
    triples = list(itertools.product(COLORS, kinds, POSITIONS))
    held = [(c, k, p) for c, k, p in triples
            if (list(COLORS).index(c) + 2 * kinds.index(k) + POSITIONS.index(p)) % 7 == 0]
    train = [t for t in triples if t not in set(held)]
    for i, j in ((0, 1), (0, 2), (1, 2)):
        assert {(t[i], t[j]) for t in train} == {(t[i], t[j]) for t in triples}
    return held


def draw_shape(d, kind, x0, y0, x1, y1, fill):
    """Draws one shape filling the box (x0, y0)-(x1, y1) with PIL ImageDraw `d`."""
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if kind == "circle":
        d.ellipse([x0, y0, x1, y1], fill=fill)
    elif kind == "square":
        d.rectangle([x0, y0, x1, y1], fill=fill)
    elif kind == "triangle":  # apex up, base = bottom edge of the box
        d.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=fill)
    elif kind == "cross":  # a plus sign, arms one third of the box wide
        tx, ty = (x1 - x0) / 6, (y1 - y0) / 6
        d.rectangle([cx - tx, y0, cx + tx, y1], fill=fill)
        d.rectangle([x0, cy - ty, x1, cy + ty], fill=fill)
    elif kind == "diamond":  # a square on its corner, vertices at the box's edge midpoints (only in shapes_concept.py's data)
        d.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=fill)
    else:
        raise ValueError(kind)


def render(color, kind, size, position, image_size=32, rng=None):
    """One RGB PIL image. rng: a random.Random for jitter (None: no jitter, the canonical render)."""
    S = image_size * SUPERSAMPLE
    j = (lambda a: rng.uniform(-a, a)) if rng is not None else (lambda a: 0.0)
    side = SIDE[size] * (1 + j(0.06)) * S
    row, col = divmod(POSITIONS.index(position), 3)
    cx = (col + 0.5) / 3 * S + j(0.03) * S
    cy = (row + 0.5) / 3 * S + j(0.03) * S
    margin = side / 2 + 0.02 * S  # keep the whole shape inside the image
    cx, cy = min(max(cx, margin), S - margin), min(max(cy, margin), S - margin)
    rgb = tuple(int(min(255, max(0, c + round(j(12))))) for c in COLORS[color])
    img = Image.new("RGB", (S, S), (255, 255, 255))
    d = ImageDraw.Draw(img)
    x0, y0, x1, y1 = cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2
    draw_shape(d, kind, x0, y0, x1, y1, rgb)
    return img.resize((image_size, image_size), Image.BOX)


def main():
    ap = argparse.ArgumentParser(description="Render the captioned coloured-shapes dataset.")
    ap.add_argument("--out", required=True, help="output folder for NNNNN.png + NNNNN.txt")
    ap.add_argument("--count", type=int, required=True, help="number of training images")
    ap.add_argument("--seed", type=int, required=True, help="random seed (attributes and jitter)")
    ap.add_argument("--size", type=int, default=32, help="image side in pixels (default 32)")
    ap.add_argument("--kinds", default=",".join(KINDS), help="comma-separated shape kinds (default: %(default)s)")
    ap.add_argument("--heldout-out", help="folder for prompts.txt + labels.json of the held-out combinations")
    args = ap.parse_args()
    if args.size < 16:
        ap.error("--size must be >= 16")
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if len(kinds) < 2 or any(k not in KINDS for k in kinds) or len(set(kinds)) != len(kinds):
        ap.error("--kinds: two or more distinct of %s" % ",".join(KINDS))
    held = heldout_triples(kinds)
    held_set = set(held)
    allowed = [(c, k, s, p) for c, k, p in itertools.product(COLORS, kinds, POSITIONS) if (c, k, p) not in held_set
               for s in SIZES]
    rng = random.Random(args.seed)
    os.makedirs(args.out, exist_ok=True)
    labels = {}
    for i in range(args.count):
        c, k, s, p = rng.choice(allowed)
        name = "%05d" % i
        cap = caption(c, k, s, p)
        render(c, k, s, p, args.size, rng).save(os.path.join(args.out, name + ".png"))
        with open(os.path.join(args.out, name + ".txt"), "w") as f:
            f.write(cap + "\n")
        labels[name] = {"caption": cap, "color": c, "shape": k, "size": s, "position": p}
    with open(os.path.join(args.out, "labels.json"), "w") as f:
        json.dump({"image_size": args.size, "kinds": kinds, "labels": labels}, f, indent=1)
    print("wrote %d images (%dx%d) to %s; %d of %d (colour, shape, position) triples held out" % (
        args.count, args.size, args.size, args.out, len(held), len(held) + len(allowed) // len(SIZES)))
    if args.heldout_out:
        os.makedirs(args.heldout_out, exist_ok=True)
        hl, lines = {}, []
        for c, k, p in held:
            for s in SIZES:
                cap = caption(c, k, s, p)
                hl["%05d" % len(lines)] = {"caption": cap, "color": c, "shape": k, "size": s, "position": p}
                lines.append(cap)
        with open(os.path.join(args.heldout_out, "prompts.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")
        with open(os.path.join(args.heldout_out, "labels.json"), "w") as f:
            json.dump({"image_size": args.size, "kinds": kinds, "labels": hl}, f, indent=1)
        print("wrote %d held-out prompts to %s/prompts.txt (+ labels.json)" % (len(lines), args.heldout_out))


if __name__ == "__main__":
    main()
