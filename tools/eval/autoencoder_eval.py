# Reconstruction quality of a trained first stage on held-out images: PSNR and SSIM (scikit-image, data_range 255,
# colour SSIM over the RGB channels) between every image under --images (recursively, *.png) and its reconstruction by
# `ldm autoencode` (encode -> posterior mode / quantised latent -> decode), which this script runs once per image.
# Reconstructions are kept in --out. Deterministic.
#  --bicubic F [F ...]: also score a trivial baseline per image: PIL bicubic downsampling by F (sides rounded) and
#    bicubic upsampling back to the original size (F=4 keeps as many spatial positions as an f=4 latent; an f=4 latent
#    with 4 channels holds as many numbers as 3 channels at F = sqrt(12) = 3.46).
#  --per-image: print (and put in --json) the figures of each image, with its mean per-channel colour offset
#    (reconstruction - original, R, G, B, in 8-bit levels).
#  --figure OUT.png [--figure-image NAME] [--figure-box L,T,W,H]: a comparison panel of one image (default: the first):
#    original | reconstruction | bicubic (first F) on top, the box (default: a centred quarter-size square) enlarged
#    below, each captioned with its PSNR.
# Run:
#   /work/venv/bin/python tools/eval/autoencoder_eval.py --ldm .build/release/ldm --model models/digits \
#       --images data/digits/test --out /tmp/rec [--json out.json] [--bicubic 4 3.4641] [--per-image] [--figure f.png]
import argparse
import glob
import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image, ImageDraw
from skimage.metrics import peak_signal_noise_ratio, structural_similarity


def scores(a, b):
    return (float(peak_signal_noise_ratio(a, b, data_range=255)),
            float(structural_similarity(a, b, data_range=255, channel_axis=2)))


def bicubic(a, factor):
    """Down by `factor` and back up, PIL bicubic (antialiased downsampling)."""
    h, w = a.shape[:2]
    small = Image.fromarray(a).resize((max(1, round(w / factor)), max(1, round(h / factor))), Image.BICUBIC)
    return np.asarray(small.resize((w, h), Image.BICUBIC))


def summary(psnr, ssim):
    return {"psnr_mean": float(np.mean(psnr)), "psnr_median": float(np.median(psnr)),
            "ssim_mean": float(np.mean(ssim)), "ssim_median": float(np.median(ssim))}


def figure(path, panels, box):
    """panels: [(caption, HxWx3 uint8)]; top row whole images, bottom row the box enlarged to the same width."""
    h, w = panels[0][1].shape[:2]
    l, t, bw, bh = box
    zw = w
    zh = round(bh * zw / bw)
    cap = 16
    sheet = Image.new("RGB", (len(panels) * (w + 4) - 4, h + zh + 2 * cap + 4), "white")
    d = ImageDraw.Draw(sheet)
    for i, (caption, img) in enumerate(panels):
        x = i * (w + 4)
        im = Image.fromarray(img)
        sheet.paste(im, (x, cap))
        if i == 0:
            d.rectangle([x + l, cap + t, x + l + bw - 1, cap + t + bh - 1], outline=(255, 0, 0))
        sheet.paste(im.crop((l, t, l + bw, t + bh)).resize((zw, zh), Image.NEAREST), (x, 2 * cap + h + 4))
        d.text((x + 2, 2), caption, fill=(0, 0, 0))
    sheet.save(path)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--ldm", required=True, help="path of the ldm executable")
    ap.add_argument("--model", required=True, help="model folder (with vae/ or vqvae/)")
    ap.add_argument("--images", required=True, help="folder of held-out PNG images (searched recursively)")
    ap.add_argument("--out", required=True, help="folder for the reconstructions")
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--bicubic", type=float, nargs="*", default=[], help="bicubic down/up baseline factors")
    ap.add_argument("--per-image", action="store_true", help="report every image")
    ap.add_argument("--figure", help="comparison panel PNG of one image")
    ap.add_argument("--figure-image", help="file name (relative to --images) of the figure's image")
    ap.add_argument("--figure-box", help="L,T,W,H of the enlarged region")
    args = ap.parse_args()
    files = sorted(glob.glob(os.path.join(args.images, "**", "*.png"), recursive=True))
    if not files:
        sys.exit(f"no PNG images under {args.images}")
    psnr, ssim = [], []
    base = {f: ([], []) for f in args.bicubic}
    per_image = {}
    for f in files:
        rel = os.path.relpath(f, args.images)
        out = os.path.join(args.out, rel)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        subprocess.run([args.ldm, "autoencode", "--model", args.model, "--input", f, "--output", out, "--overwrite"],
                       check=True, stdout=subprocess.DEVNULL)
        a = np.asarray(Image.open(f).convert("RGB"))
        b = np.asarray(Image.open(out).convert("RGB"))
        p, s = scores(a, b)
        psnr.append(p)
        ssim.append(s)
        offset = (b.astype(np.float64) - a.astype(np.float64)).reshape(-1, 3).mean(axis=0)
        entry = {"size": [a.shape[1], a.shape[0]], "psnr": p, "ssim": s, "offset_rgb": [round(float(v), 2) for v in offset]}
        for factor in args.bicubic:
            bp, bs = scores(a, bicubic(a, factor))
            base[factor][0].append(bp)
            base[factor][1].append(bs)
            entry["bicubic_x%g" % factor] = {"psnr": bp, "ssim": bs}
        per_image[rel] = entry
        if args.per_image:
            line = f"{rel} {a.shape[1]}x{a.shape[0]}: PSNR {p:.2f} dB, SSIM {s:.4f}, offset RGB {entry['offset_rgb']}"
            for factor in args.bicubic:
                e = entry["bicubic_x%g" % factor]
                line += f" | bicubic x{factor:g}: {e['psnr']:.2f} dB, {e['ssim']:.4f}"
            print(line)
    res = {"images": len(files), **summary(psnr, ssim)}
    for factor in args.bicubic:
        res["bicubic_x%g" % factor] = summary(*base[factor])
    if args.per_image:
        res["per_image"] = per_image
    print(f"{res['images']} images: PSNR {res['psnr_mean']:.2f} dB (median {res['psnr_median']:.2f}), "
          f"SSIM {res['ssim_mean']:.4f} (median {res['ssim_median']:.4f})")
    for factor in args.bicubic:
        r = res["bicubic_x%g" % factor]
        print(f"bicubic x{factor:g} baseline: PSNR {r['psnr_mean']:.2f} dB, SSIM {r['ssim_mean']:.4f}")
    if args.figure:
        rel = args.figure_image or os.path.relpath(files[0], args.images)
        a = np.asarray(Image.open(os.path.join(args.images, rel)).convert("RGB"))
        b = np.asarray(Image.open(os.path.join(args.out, rel)).convert("RGB"))
        h, w = a.shape[:2]
        box = [int(v) for v in args.figure_box.split(",")] if args.figure_box else [w * 3 // 8, h * 3 // 8, w // 4, h // 4]
        panels = [("original %s" % rel, a), ("autoencoder %.2f dB" % scores(a, b)[0], b)]
        if args.bicubic:
            c = bicubic(a, args.bicubic[0])
            panels.append(("bicubic x%g %.2f dB" % (args.bicubic[0], scores(a, c)[0]), c))
        figure(args.figure, panels, box)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=2)


if __name__ == "__main__":
    main()
