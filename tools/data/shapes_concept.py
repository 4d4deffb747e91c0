# A new concept for models/shapes, for `ldm train lora` (docs/results.md "Teaching models/shapes a new concept with a
# LoRA"), in the captions of tools/data/shapes.py ("a small red diamond in the top left corner on a white background"):
#  - --concept diamond: a new shape kind, a square standing on its corner (shapes.draw_shape "diamond"), in the six
#    palette colours; held out: the (colour, position) pairs with (colour index + position index) % 3 == 0 (18 of 54;
#    every colour and position still occurs with diamonds).
#  - --concept cyan: a new colour, cyan (0, 180, 200), on the four kinds; held out: the (kind, position) pairs with
#    (2 * kind index + position index) % 3 == 0 (12 of 36). (models/shapes' first stage cannot decode cyan: see
#    docs/results.md.)
#  - DIR: --count renders of the concept (attributes drawn uniformly from the allowed combinations, jitter as shapes.py)
#    plus --reg-count renders of the base data set's own distribution (its non-held-out triples), the regularisation
#    images of kohya / DreamBooth prior preservation, so the LoRA keeps what the model knew. NNNNN.png + NNNNN.txt,
#    labels.json.
#  - --heldout-out DIR2: DIR2/prompts.txt (each held-out combination in both sizes) and DIR2/labels.json (with "kinds"
#    and "extra_colors" so that tools/eval/shapes_eval.py knows the new kind / colour).
# Deterministic given the arguments. Run:
#   /work/venv/bin/python tools/data/shapes_concept.py --concept diamond --out DIR --count N --reg-count M --seed S
#       [--heldout-out DIR2]
import argparse
import itertools
import json
import os
import random

import shapes

NEW_KIND = "diamond"
NEW_COLOR, NEW_RGB = "cyan", (0, 180, 200)


def main():
    ap = argparse.ArgumentParser(description="Render a concept models/shapes never saw + regularisation images.")
    ap.add_argument("--concept", choices=["diamond", "cyan"], required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--count", type=int, required=True, help="number of images of the concept")
    ap.add_argument("--reg-count", type=int, default=0, help="number of images of the base data's distribution")
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--heldout-out")
    args = ap.parse_args()
    if args.count < 1 or args.reg_count < 0:
        ap.error("--count must be >= 1 and --reg-count >= 0")
    base_colors, base_kinds = list(shapes.COLORS), list(shapes.KINDS)
    extra = {}
    if args.concept == "diamond":
        kinds = base_kinds + [NEW_KIND]
        held = {(c, NEW_KIND, p) for c, p in itertools.product(base_colors, shapes.POSITIONS)
                if (base_colors.index(c) + shapes.POSITIONS.index(p)) % 3 == 0}
        combos = [(c, NEW_KIND, p) for c, p in itertools.product(base_colors, shapes.POSITIONS)]
    else:
        kinds = base_kinds
        shapes.COLORS[NEW_COLOR] = NEW_RGB
        extra = {NEW_COLOR: list(NEW_RGB)}
        held = {(NEW_COLOR, k, p) for k, p in itertools.product(base_kinds, shapes.POSITIONS)
                if (2 * base_kinds.index(k) + shapes.POSITIONS.index(p)) % 3 == 0}
        combos = [(NEW_COLOR, k, p) for k, p in itertools.product(base_kinds, shapes.POSITIONS)]
    concept = [(c, k, s, p) for c, k, p in combos if (c, k, p) not in held for s in shapes.SIZES]
    for i in (0, 2) if args.concept == "diamond" else (1, 2):  # every colour / kind and position still occurs
        assert {t[i] for t in combos} == {t[i if i < 2 else 3] for t in concept}
    base_held = set(shapes.heldout_triples())
    base = [(c, k, s, p) for c, k, p in itertools.product(base_colors, base_kinds, shapes.POSITIONS)
            if (c, k, p) not in base_held for s in shapes.SIZES]
    rng = random.Random(args.seed)
    os.makedirs(args.out, exist_ok=True)
    labels = {}
    picks = [rng.choice(concept) for _ in range(args.count)] + [rng.choice(base) for _ in range(args.reg_count)]
    for i, (c, k, s, p) in enumerate(picks):
        name = "%05d" % i
        cap = shapes.caption(c, k, s, p)
        shapes.render(c, k, s, p, args.size, rng).save(os.path.join(args.out, name + ".png"))
        with open(os.path.join(args.out, name + ".txt"), "w") as f:
            f.write(cap + "\n")
        labels[name] = {"caption": cap, "color": c, "shape": k, "size": s, "position": p}
    with open(os.path.join(args.out, "labels.json"), "w") as f:
        json.dump({"image_size": args.size, "kinds": kinds, "extra_colors": extra, "labels": labels}, f, indent=1)
    print("wrote %d %s + %d regularisation images to %s; %d of %d %s combinations held out"
          % (args.count, args.concept, args.reg_count, args.out, len(held), len(combos), args.concept))
    if args.heldout_out:
        os.makedirs(args.heldout_out, exist_ok=True)
        hl, lines = {}, []
        for c, k, p in [t for t in combos if t in held]:
            for s in shapes.SIZES:
                cap = shapes.caption(c, k, s, p)
                hl["%05d" % len(lines)] = {"caption": cap, "color": c, "shape": k, "size": s, "position": p}
                lines.append(cap)
        with open(os.path.join(args.heldout_out, "prompts.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")
        with open(os.path.join(args.heldout_out, "labels.json"), "w") as f:
            json.dump({"image_size": args.size, "kinds": kinds, "extra_colors": extra, "labels": hl}, f, indent=1)
        print("wrote %d held-out prompts to %s/prompts.txt (+ labels.json)" % (len(lines), args.heldout_out))


if __name__ == "__main__":
    main()
