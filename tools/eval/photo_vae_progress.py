# Judges a photo-autoencoder training run while it trains (issue 22): loads the model weights of the latest (or a
# given) checkpoint of `ldm train autoencoder` (RUN_DIR/checkpoints/step-N.safetensors, tensors "model.<diffusers
# name>") into diffusers' AutoencoderKL built from the run's config (model_config), in float32, and measures
#  - PSNR / SSIM / per-channel mean offset of the whole held-out photos (posterior mode, no tiling), beside PIL
#    bicubic down/up baselines at the factors given (tools/eval/photo_vae_diagnosis.py's metrics);
#  - flat colour probes (uniform images) at the sizes given: the mean colour that comes back.
# One JSON line per call is appended to --log (step, metrics), so a run's progress can be plotted later.
# The figures that ship are measured with `ldm autoencode` (tools/eval/autoencoder_eval.py); this is a monitor.
# Run: nice -n 19 /work/venv/bin/python tools/eval/photo_vae_progress.py --config CONFIG.json --run RUN_DIR \
#          --heldout data/photos/heldout [--checkpoint FILE] [--probe-sizes 512] [--log progress.jsonl]
import argparse
import glob
import json
import os
import sys

import numpy as np
import torch
from diffusers import AutoencoderKL
from PIL import Image
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from photo_vae_diagnosis import PROBES, bicubic, metrics, reconstruct  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description="Held-out PSNR / SSIM and flat probes of an autoencoder checkpoint.")
    ap.add_argument("--config", required=True, help="the ldm train autoencoder JSON config (model_config inline)")
    ap.add_argument("--run", help="run directory (its latest checkpoint)")
    ap.add_argument("--checkpoint", help="a checkpoint file instead of --run's latest")
    ap.add_argument("--heldout", required=True)
    ap.add_argument("--bicubic", type=float, nargs="*", default=[4.0, 3.4641])
    ap.add_argument("--probe-sizes", type=int, nargs="*", default=[512])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--log")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    ckpt = a.checkpoint or sorted(glob.glob(os.path.join(a.run, "checkpoints", "step-*.safetensors")))[-1]
    cfg = json.load(open(a.config))["model_config"]
    vae = AutoencoderKL.from_config({k: v for k, v in cfg.items() if k != "_class_name"}).eval()
    state = {k[len("model."):]: v.float() for k, v in load_file(ckpt).items() if k.startswith("model.")}
    vae.load_state_dict(state, strict=True)
    step = int(os.path.basename(ckpt).split("-")[1].split(".")[0])
    out = {"checkpoint": ckpt, "step": step, "heldout": {}, "probes": {}}
    for p in sorted(glob.glob(os.path.join(a.heldout, "*.png"))):
        name = os.path.splitext(os.path.basename(p))[0]
        img = np.asarray(Image.open(p).convert("RGB"))
        m = metrics(img, reconstruct(vae, img)[0])
        row = {"psnr": m["psnr"], "ssim": m["ssim"], "offset_rgb": m["offset_rgb"]}
        for f in a.bicubic:
            b = metrics(img, bicubic(img, f))
            row["bicubic_x%g" % f] = [b["psnr"], b["ssim"]]
        out["heldout"][name] = row
        print("step %d %-10s PSNR %.2f SSIM %.3f offset %s  bicubic %s" % (step, name, m["psnr"], m["ssim"],
              m["offset_rgb"], " ".join("x%g %.2f/%.3f" % (f, *row["bicubic_x%g" % f]) for f in a.bicubic)))
    ps = [v["psnr"] for v in out["heldout"].values()]
    ss = [v["ssim"] for v in out["heldout"].values()]
    out["mean"] = [round(float(np.mean(ps)), 2), round(float(np.mean(ss)), 3)]
    print("step %d mean PSNR %.2f SSIM %.3f" % (step, *out["mean"]))
    for size in a.probe_sizes:
        for name in ["black", "grey128", "white", "red", "sky"]:
            c = PROBES[name]
            img = np.empty((size, size, 3), np.uint8)
            img[:] = c
            r = reconstruct(vae, img)[0].reshape(-1, 3).mean(axis=0)
            out["probes"]["%s@%d" % (name, size)] = [round(float(v)) for v in r]
        print("step %d probes %d: %s" % (step, size, {k: v for k, v in out["probes"].items() if k.endswith("@%d" % size)}))
    if a.log:
        with open(a.log, "a") as f:
            f.write(json.dumps(out, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
