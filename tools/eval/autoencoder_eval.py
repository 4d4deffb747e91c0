# Reconstruction quality of a trained first stage on held-out images: PSNR and SSIM (scikit-image, data_range 255,
# colour SSIM over the RGB channels) between every image under --images (recursively, *.png) and its reconstruction by
# `ldm autoencode` (encode -> posterior mode / quantised latent -> decode), which this script runs once per image.
# Reconstructions are kept in --out. Deterministic. Run:
#   /work/venv/bin/python tools/eval/autoencoder_eval.py --ldm .build/release/ldm --model models/digits \
#       --images data/digits/test --out /tmp/rec [--json out.json]
import argparse
import glob
import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--ldm", required=True, help="path of the ldm executable")
    ap.add_argument("--model", required=True, help="model folder (with vae/ or vqvae/)")
    ap.add_argument("--images", required=True, help="folder of held-out PNG images (searched recursively)")
    ap.add_argument("--out", required=True, help="folder for the reconstructions")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    files = sorted(glob.glob(os.path.join(args.images, "**", "*.png"), recursive=True))
    if not files:
        sys.exit(f"no PNG images under {args.images}")
    psnr, ssim = [], []
    for f in files:
        rel = os.path.relpath(f, args.images)
        out = os.path.join(args.out, rel)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        subprocess.run([args.ldm, "autoencode", "--model", args.model, "--input", f, "--output", out, "--overwrite"],
                       check=True, stdout=subprocess.DEVNULL)
        a = np.asarray(Image.open(f).convert("RGB"))
        b = np.asarray(Image.open(out).convert("RGB"))
        psnr.append(peak_signal_noise_ratio(a, b, data_range=255))
        ssim.append(structural_similarity(a, b, data_range=255, channel_axis=2))
    res = {"images": len(files), "psnr_mean": float(np.mean(psnr)), "psnr_median": float(np.median(psnr)),
           "ssim_mean": float(np.mean(ssim)), "ssim_median": float(np.median(ssim))}
    print(f"{res['images']} images: PSNR {res['psnr_mean']:.2f} dB (median {res['psnr_median']:.2f}), "
          f"SSIM {res['ssim_mean']:.4f} (median {res['ssim_median']:.4f})")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=2)


if __name__ == "__main__":
    main()
