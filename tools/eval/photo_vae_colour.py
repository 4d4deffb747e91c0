# Where a photo autoencoder's mean colour offset comes from (issue 22): compares held-out photos with their
# reconstructions (e.g. the `ldm autoencode` outputs that tools/eval/autoencoder_eval.py writes) and the training crops:
#  - the per-channel mean offset (reconstruction - input, 8-bit levels) of the whole photo, and how it splits over
#    B x B blocks: the share of the whole offset that the worst 5/10/25% of the blocks carry (a global bias spreads
#    evenly; a local fault sits in a few blocks), and the worst blocks with their input colour;
#  - the offset per input saturation bin (HSV S) and per hue sector (the pixels with S >= 0.25), with each bin's share
#    of the pixels and its contribution to the whole-photo offset;
#  - the training crops' coverage of the same bins: the share of training pixels in each saturation bin / hue sector
#    (coverage of the colours that carry the offset), and per held-out photo the share of its pixels whose colour
#    (RGB cube cut in 8 x 8 x 8 bins of 32 levels) is rare in training: the bin holds under 0.05% (0.2%, the share
#    of a bin when colours are uniform) of the training pixels.
# Deterministic. Run: /work/venv/bin/python tools/eval/photo_vae_colour.py --heldout data/photos64v2/heldout \
#     --rec runs/photo-vae-v2/rec --train data/photos64v2/train [--block 25] [--train-sample 2000] [--json out.json]
import argparse
import glob
import json
import os

import numpy as np
from PIL import Image
from skimage.color import rgb2hsv

SAT_BINS = [0.0, 0.1, 0.25, 0.4, 0.55, 0.7, 0.85, 1.01]
HUES = ["red", "orange", "yellow", "yellow-green", "green", "cyan", "blue", "purple", "magenta"]  # 9 sectors of 40 deg
HUE_MIN_SAT = 0.25


def load(p):
    return np.asarray(Image.open(p).convert("RGB"))


def hue_sector(hsv):
    return np.minimum((((hsv[..., 0] * 360.0) + 20.0) % 360.0 / 40.0).astype(int), 8)


def by_bins(a, d, hsv):
    """Offset per saturation bin and hue sector: mean offset inside the bin, pixel share, contribution to the mean."""
    n = a.shape[0] * a.shape[1]
    out = {"saturation": [], "hue": []}
    s = hsv[..., 1]
    for lo, hi in zip(SAT_BINS[:-1], SAT_BINS[1:]):
        m = (s >= lo) & (s < hi)
        k = int(m.sum())
        if k == 0:
            continue
        mean = d[m].mean(axis=0)
        out["saturation"].append({"bin": [lo, min(hi, 1.0)], "share": round(k / n, 4),
                                  "offset": [round(float(v), 2) for v in mean],
                                  "contribution": [round(float(v) * k / n, 2) for v in mean],
                                  "input_mean": [round(float(v), 1) for v in a[m].mean(axis=0)]})
    sec = hue_sector(hsv)
    for i, name in enumerate(HUES):
        m = (sec == i) & (s >= HUE_MIN_SAT)
        k = int(m.sum())
        if k == 0:
            continue
        mean = d[m].mean(axis=0)
        out["hue"].append({"sector": name, "share": round(k / n, 4), "offset": [round(float(v), 2) for v in mean],
                           "contribution": [round(float(v) * k / n, 2) for v in mean],
                           "input_mean": [round(float(v), 1) for v in a[m].mean(axis=0)]})
    return out


def blocks(a, d, b):
    """Mean offset per B x B block; the share of the photo's offset sum carried by the worst blocks (per channel)."""
    h, w = a.shape[0] // b * b, a.shape[1] // b * b
    db = d[:h, :w].reshape(h // b, b, w // b, b, 3).mean(axis=(1, 3)).reshape(-1, 3)
    ab = a[:h, :w].astype(np.float64).reshape(h // b, b, w // b, b, 3).mean(axis=(1, 3)).reshape(-1, 3)
    total = db.sum(axis=0)
    res = {"block": b, "count": int(db.shape[0]), "share_of_offset": {}, "blocks_over_4": [], "worst": {}}
    for c, ch in enumerate("RGB"):
        res["blocks_over_4"].append(round(float((np.abs(db[:, c]) > 4).mean()), 3))
        if abs(total[c]) < 1e-9:
            continue
        sign = np.sign(total[c])
        order = np.argsort(-sign * db[:, c])
        for q in (0.05, 0.10, 0.25, 0.5):
            k = max(1, int(round(q * len(order))))
            res["share_of_offset"].setdefault(ch, {})["%d%%" % int(q * 100)] = round(
                float(db[order[:k], c].sum() / total[c]), 3)
        res["worst"][ch] = [{"block": int(i), "offset": [round(float(v), 1) for v in db[i]],
                             "input": [round(float(v)) for v in ab[i]]} for i in order[:5]]
    return res


def main():
    ap = argparse.ArgumentParser(description="Split a photo autoencoder's colour offset by region and by colour.")
    ap.add_argument("--heldout", required=True)
    ap.add_argument("--rec", required=True, help="folder with the reconstructions, same file names")
    ap.add_argument("--train", help="training crops folder (coverage of the colour bins)")
    ap.add_argument("--train-sample", type=int, default=2000, help="training crops sampled (evenly by name)")
    ap.add_argument("--block", type=int, default=25)
    ap.add_argument("--json")
    a = ap.parse_args()
    report = {"photos": {}}
    for p in sorted(glob.glob(os.path.join(a.heldout, "*.png"))):
        name = os.path.basename(p)
        x = load(p)
        r = load(os.path.join(a.rec, name))
        d = r.astype(np.float64) - x.astype(np.float64)
        hsv = rgb2hsv(x)
        row = {"offset": [round(float(v), 2) for v in d.reshape(-1, 3).mean(axis=0)],
               "bins": by_bins(x, d, hsv), "blocks": blocks(x, d, a.block)}
        report["photos"][name] = row
        print("== %s offset R,G,B %s" % (name, row["offset"]))
        for e in row["bins"]["saturation"]:
            print("  sat %.2f-%.2f share %.3f offset %s contribution %s input %s" % (
                *e["bin"], e["share"], e["offset"], e["contribution"], e["input_mean"]))
        for e in row["bins"]["hue"]:
            print("  hue %-12s share %.3f offset %s contribution %s input %s" % (
                e["sector"], e["share"], e["offset"], e["contribution"], e["input_mean"]))
        bl = row["blocks"]
        print("  %dx%d blocks (%d): share of offset in the worst 5/10/25/50%%: %s; blocks with |offset|>4 R,G,B %s" % (
            bl["block"], bl["block"], bl["count"], bl["share_of_offset"], bl["blocks_over_4"]))
        for ch, w in bl["worst"].items():
            print("  worst %s blocks: %s" % (ch, [(e["offset"], e["input"]) for e in w[:3]]))
    if a.train:
        files = sorted(glob.glob(os.path.join(a.train, "*.png")))
        files = files[::max(1, len(files) // a.train_sample)]
        sat = np.zeros(len(SAT_BINS) - 1)
        hue = np.zeros(len(HUES))
        n = 0
        cube = np.zeros(512)
        for f in files:
            x = load(f)
            hsv = rgb2hsv(x).reshape(-1, 3)
            sat += np.histogram(hsv[:, 1], bins=SAT_BINS)[0]
            sec = hue_sector(hsv)[hsv[:, 1] >= HUE_MIN_SAT]
            hue += np.bincount(sec, minlength=len(HUES))
            n += hsv.shape[0]
            q = x.reshape(-1, 3).astype(int) // 32
            cube += np.bincount(q[:, 0] * 64 + q[:, 1] * 8 + q[:, 2], minlength=512)
        report["train"] = {"crops": len(files), "saturation": [round(float(v / n), 4) for v in sat],
                           "hue": {h: round(float(v / n), 4) for h, v in zip(HUES, hue)}}
        print("== training crops (%d sampled): pixel share per saturation bin %s" % (
            len(files), dict(zip(["%.2f" % s for s in SAT_BINS[:-1]], report["train"]["saturation"]))))
        print("   pixel share per hue sector (S >= %.2f): %s" % (HUE_MIN_SAT, report["train"]["hue"]))
        cube /= n
        for p in sorted(glob.glob(os.path.join(a.heldout, "*.png"))):
            q = load(p).reshape(-1, 3).astype(int) // 32
            b = q[:, 0] * 64 + q[:, 1] * 8 + q[:, 2]
            cov = {"bin_under_0.05%": round(float((cube[b] < 0.0005).mean()), 3),
                   "bin_under_0.2%": round(float((cube[b] < 0.002).mean()), 3)}
            report["train"].setdefault("coverage", {})[os.path.basename(p)] = cov
            print("   %s: share of its pixels in colour bins rare in training: %s" % (os.path.basename(p), cov))
        for name, row in report["photos"].items():
            print("   %s pixel share per hue sector: %s" % (name, {e["sector"]: e["share"] for e in row["bins"]["hue"]}))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
