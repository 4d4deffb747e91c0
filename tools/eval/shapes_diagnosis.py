# Diagnosis of the shapes model's errors (issue 22): which part of the latent diffusion model (Rombach et al. 2022:
# first stage E/D vs the conditional UNet with its text encoder) loses the kind, colour or position of a shape.
# Writes inputs for `ldm autoencode` / `ldm txt2img` and breaks tools/eval/shapes_eval.py's --json readings down.
#  grid --out DIR [--size 32] [--jitter N] [--seed S]: every (colour, kind, size, position) of tools/data/shapes.py
#    (6 x 4 x 2 x 9 = 432) rendered without jitter, plus N seeded jittered renders of each, as DIR/NNNNN.png with
#    DIR/labels.json (shapes_eval format; every entry also says whether its (colour, kind, position) triple is one
#    of the held-out ones). Autoencode them and judge the reconstructions: if the first stage keeps every attribute,
#    the samples' errors come from the UNet and its conditioning.
#  prompts --out DIR [--count 31] [--seed S]: captions of `count` seeded (colour, kind, position) triples that DO
#    occur in training (both sizes), balanced like the held-out list, as DIR/prompts.txt + DIR/labels.json: the
#    same sampling on seen combinations tells a conditioning that does not compose (seen >> held out) from a model
#    that cannot draw (both low).
#  repeat --out DIR --caption C --count N: N copies of one caption (e.g. the README prompt, one seed each).
#  text --model models/shapes: the trained text encoder's view of the captions (torch + transformers' CLIPTextModel
#    on the shipped weights): linear probes of each attribute (trained on the captions of seen triples, tested on the
#    held-out ones) and the mean L2 distance between the 20 x 64 output embeddings of captions that differ in one
#    attribute only (small distance = hard for the UNet's cross-attention to tell apart).
#  breakdown --eval EVAL.json [--eval ...] [--labels labels.json]: accuracy per (kind, size), per colour, per
#    position, held out vs seen; --orig DIR --rec DIR adds the PSNR of reconstructions per (kind, size).
# Run: /work/venv/bin/python tools/eval/shapes_diagnosis.py grid --out /tmp/grid --jitter 2
#      (for f in /tmp/grid/*.png; do ldm autoencode --model models/shapes --input $f --output /tmp/rec/$(basename $f); done)
#      /work/venv/bin/python tools/eval/shapes_eval.py --samples /tmp/rec --labels /tmp/grid/labels.json --json /tmp/rec.json
#      /work/venv/bin/python tools/eval/shapes_diagnosis.py breakdown --eval /tmp/rec.json --labels /tmp/grid/labels.json \
#          --orig /tmp/grid --rec /tmp/rec
import argparse
import collections
import itertools
import json
import os
import random
import sys

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data"))
import shapes  # noqa: E402  (tools/data/shapes.py: palette, positions, renderer, held-out rule)

ATTRS = ["color", "shape", "size", "position"]


def entry(c, k, s, p, held):
    return {"caption": shapes.caption(c, k, s, p), "color": c, "shape": k, "size": s, "position": p,
            "heldout": (c, k, p) in held}


def write_labels(out, labels, size):
    with open(os.path.join(out, "labels.json"), "w") as f:
        json.dump({"image_size": size, "kinds": shapes.KINDS, "labels": labels}, f, indent=1)


def cmd_grid(a):
    os.makedirs(a.out, exist_ok=True)
    held = set(shapes.heldout_triples())
    rng = random.Random(a.seed)
    labels, i = {}, 0
    for c, k, s, p in itertools.product(shapes.COLORS, shapes.KINDS, shapes.SIZES, shapes.POSITIONS):
        for j in range(1 + a.jitter):
            name = "%05d" % i
            shapes.render(c, k, s, p, a.size, rng if j else None).save(os.path.join(a.out, name + ".png"))
            labels[name] = dict(entry(c, k, s, p, held), jitter=bool(j))
            i += 1
    write_labels(a.out, labels, a.size)
    print("wrote %d renders to %s" % (i, a.out))


def cmd_prompts(a):
    os.makedirs(a.out, exist_ok=True)
    held = set(shapes.heldout_triples())
    seen = [t for t in itertools.product(shapes.COLORS, shapes.KINDS, shapes.POSITIONS) if t not in held]
    rng = random.Random(a.seed)
    # Balanced like the held-out list: cycle through the kinds so each kind gets about the same number of triples.
    by_kind = {k: [t for t in seen if t[1] == k] for k in shapes.KINDS}
    for v in by_kind.values():
        rng.shuffle(v)
    picked = [by_kind[shapes.KINDS[n % len(shapes.KINDS)]][n // len(shapes.KINDS)] for n in range(a.count)]
    labels, lines = {}, []
    for c, k, p in picked:
        for s in shapes.SIZES:
            labels["%05d" % len(lines)] = entry(c, k, s, p, held)
            lines.append(shapes.caption(c, k, s, p))
    with open(os.path.join(a.out, "prompts.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    write_labels(a.out, labels, a.size)
    print("wrote %d prompts of seen combinations to %s/prompts.txt" % (len(lines), a.out))


def cmd_repeat(a):
    os.makedirs(a.out, exist_ok=True)
    words = a.caption.split()  # "a SIZE COLOUR KIND <phrase> on a white background"
    s, c, k = words[1], words[2], words[3]
    phrase = " ".join(words[4:-4])
    p = [q for q, v in shapes.PHRASES.items() if v == phrase]
    if len(p) != 1 or s not in shapes.SIZES or c not in shapes.COLORS or k not in shapes.KINDS:
        sys.exit("not a shapes.py caption: %r" % a.caption)
    held = set(shapes.heldout_triples())
    labels = {"%05d" % i: entry(c, k, s, p[0], held) for i in range(a.count)}
    with open(os.path.join(a.out, "prompts.txt"), "w") as f:
        f.write("\n".join([a.caption] * a.count) + "\n")
    write_labels(a.out, labels, a.size)
    print("wrote %d copies of %r to %s" % (a.count, a.caption, a.out))


def cmd_text(a):
    import torch
    from sklearn.linear_model import LogisticRegression
    from transformers import CLIPTextModel, CLIPTokenizer
    torch.set_num_threads(1)
    tok = CLIPTokenizer.from_pretrained(os.path.join(a.model, "tokenizer"))
    te = CLIPTextModel.from_pretrained(os.path.join(a.model, "text_encoder"), torch_dtype=torch.float32).eval()
    held = set(shapes.heldout_triples())
    combos = list(itertools.product(shapes.COLORS, shapes.KINDS, shapes.SIZES, shapes.POSITIONS))
    caps = [shapes.caption(*c) for c in combos]
    enc = tok(caps, padding="max_length", max_length=te.config.max_position_embeddings, return_tensors="pt")
    print("tokens per caption (with start/end): %d..%d of %d positions" % (
        int(enc.attention_mask.sum(1).min()), int(enc.attention_mask.sum(1).max()), te.config.max_position_embeddings))
    with torch.no_grad():
        H = te(enc.input_ids).last_hidden_state.numpy().astype(np.float64)
    is_held = np.array([(c, k, p) in held for c, k, s, p in combos])
    names = ["colour", "kind", "size", "position"]
    res = {"probe": {}, "distance": {}}
    for label, X in [("whole sequence", H.reshape(len(H), -1)), ("mean over tokens", H.mean(1))]:
        acc = {}
        for i, n in enumerate(names):
            y = np.array([c[i] for c in combos])
            clf = LogisticRegression(max_iter=5000, C=10).fit(X[~is_held], y[~is_held])
            acc[n] = float((clf.predict(X[is_held]) == y[is_held]).mean())
        res["probe"][label] = acc
        print("linear probe, %s, trained on seen captions, accuracy on held-out captions: %s" % (
            label, ", ".join("%s %.0f%%" % (n, 100 * v) for n, v in acc.items())))
    index = {c: i for i, c in enumerate(combos)}
    for i, (n, vals) in enumerate(zip(names, [list(shapes.COLORS), shapes.KINDS, shapes.SIZES, shapes.POSITIONS])):
        D, cnt = np.zeros((len(vals), len(vals))), np.zeros((len(vals), len(vals)))
        for c in combos:
            for j, v in enumerate(vals):
                b = list(c)
                b[i] = v
                if tuple(b) != c:
                    D[vals.index(c[i]), j] += np.linalg.norm(H[index[c]] - H[index[tuple(b)]])
                    cnt[vals.index(c[i]), j] += 1
        D /= np.maximum(cnt, 1)
        off = D[~np.eye(len(vals), dtype=bool)]
        res["distance"][n] = {"values": vals, "matrix": D.round(2).tolist(), "min": float(off.min()),
                              "mean": float(off.mean())}
        print("\nmean L2 distance between embeddings of captions that differ only in %s (min %.1f, mean %.1f):" % (
            n, off.min(), off.mean()))
        print("%-13s" % "" + "".join("%9s" % v[:9] for v in vals))
        for r, v in enumerate(vals):
            print("%-13s" % v + "".join("%9s" % ("-" if r == q else "%.1f" % D[r, q]) for q in range(len(vals))))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
        print("wrote", a.json)


def psnr(x, y):
    mse = float(((x.astype(np.float64) - y.astype(np.float64)) ** 2).mean())
    return 99.0 if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def cmd_breakdown(a):
    rows = []
    for path in a.eval:
        with open(path) as f:
            ev = json.load(f)
        labels = ev["labels"]
        with open(a.labels or labels) as f:
            meta = json.load(f)
        lab = meta["labels"] if "labels" in meta else meta
        held = set(shapes.heldout_triples())
        for name, v in ev["files"].items():
            l = lab[v["label"]]
            heldout = l.get("heldout", (l["color"], l["shape"], l["position"]) in held)
            r = dict(l, heldout=heldout, file=name, read=v["read"], ok=v["correct"])
            if a.orig and a.rec:
                x = np.asarray(Image.open(os.path.join(a.orig, v["label"] + ".png")).convert("RGB"))
                y = np.asarray(Image.open(os.path.join(a.rec, name)).convert("RGB"))
                r["psnr"] = psnr(x, y)
            rows.append(r)

    def table(title, key):
        groups = collections.OrderedDict()
        for r in sorted(rows, key=lambda r: str(key(r))):
            groups.setdefault(key(r), []).append(r)
        print("\n%s" % title)
        print("%-22s %5s %7s %7s %7s %7s %7s%s" % ("group", "n", "colour", "kind", "size", "pos", "all",
                                                  "  PSNR" if "psnr" in rows[0] else ""))
        out = {}
        for g, rs in groups.items():
            acc = {k: sum(r["ok"][k] for r in rs) / len(rs) for k in ATTRS}
            acc["all"] = sum(all(r["ok"].values()) for r in rs) / len(rs)
            line = "%-22s %5d" % (g, len(rs)) + "".join(" %6.1f%%" % (100 * acc[k]) for k in ATTRS + ["all"])
            if "psnr" in rs[0]:
                acc["psnr"] = float(np.mean([r["psnr"] for r in rs]))
                line += " %5.1f" % acc["psnr"]
            print(line)
            out[str(g)] = dict(acc, n=len(rs))
        return out

    res = {"all": table("all", lambda r: "all"),
           "heldout": table("held-out triple?", lambda r: "held out" if r["heldout"] else "seen"),
           "kind_size": table("kind, size", lambda r: "%s %s" % (r["shape"], r["size"])),
           "color": table("colour", lambda r: r["color"]),
           "position": table("position", lambda r: r["position"])}
    wrong = collections.Counter()
    for r in rows:
        for k in ATTRS:
            if not r["ok"][k]:
                wrong[(k, r[k], str(r["read"][k]))] += 1
    print("\nmost frequent misreadings (attribute: asked -> read):")
    for (k, want, got), n in wrong.most_common(12):
        print("  %-8s %-12s -> %-12s %d" % (k, want, got, n))
    res["misreadings"] = [[k, want, got, n] for (k, want, got), n in wrong.most_common()]
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
        print("wrote", a.json)


def main():
    ap = argparse.ArgumentParser(description="Shapes model error diagnosis (issue 22).")
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("grid")
    g.add_argument("--out", required=True)
    g.add_argument("--size", type=int, default=32)
    g.add_argument("--jitter", type=int, default=0, help="jittered renders per combination besides the clean one")
    g.add_argument("--seed", type=int, default=5)
    p = sub.add_parser("prompts")
    p.add_argument("--out", required=True)
    p.add_argument("--count", type=int, default=31, help="(colour, kind, position) triples; each gives 2 prompts")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=32)
    r = sub.add_parser("repeat")
    r.add_argument("--out", required=True)
    r.add_argument("--caption", required=True)
    r.add_argument("--count", type=int, default=8)
    r.add_argument("--size", type=int, default=32)
    t = sub.add_parser("text")
    t.add_argument("--model", required=True, help="the shapes pipeline folder (tokenizer/ and text_encoder/)")
    t.add_argument("--json")
    b = sub.add_parser("breakdown")
    b.add_argument("--eval", action="append", required=True, help="shapes_eval.py --json output (repeatable)")
    b.add_argument("--labels", help="labels.json (default: the one named in the eval file)")
    b.add_argument("--orig", help="folder of the autoencoder's inputs (NNNNN.png)")
    b.add_argument("--rec", help="folder of the reconstructions (same names)")
    b.add_argument("--json", help="write the tables here")
    a = ap.parse_args()
    {"grid": cmd_grid, "prompts": cmd_prompts, "repeat": cmd_repeat, "text": cmd_text,
     "breakdown": cmd_breakdown}[a.cmd](a)


if __name__ == "__main__":
    main()
