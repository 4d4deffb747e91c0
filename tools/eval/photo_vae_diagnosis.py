# Diagnosis of the photo autoencoder's colour shifts (issue 22): where the error of models/photo-vae (an
# AutoencoderKL first stage, Rombach et al. 2022 Sec. 3.1 / App. G) comes from. Loads the shipped diffusers folder
# with diffusers' AutoencoderKL in float32 (an independent implementation of the same network: --check-ldm compares
# it with our `ldm autoencode` output) and measures, on the held-out photos and on crops of the training photos:
#  - PSNR / SSIM (scikit-image, data range 255) of the reconstruction (posterior mode) and, as diagnostics, after
#    removing the per-channel mean offset and after a least-squares 3x3 + bias colour map;
#  - the per-channel mean offset (reconstruction - input, 8-bit levels), and the offset per input-brightness bin
#    (luma 0-51, 51-102, ... 204-255);
#  - the same when each photo is cut into independent T x T tiles (--tiles T ...; T = the training crop size puts the
#    network in exactly its training conditions: GroupNorm statistics and mid-block attention over a crop, not the
#    whole photo);
#  - flat colour probes: uniform images (greys and the shapes palette) at several sizes, the mean colour that
#    comes back;
#  - statistics of the training data (per-channel mean / std, saturation, share of grey crops) against the held-out
#    photos; bicubic x4 and x3.46 down/up baselines (PIL, as tools/eval/autoencoder_eval.py).
# Deterministic. Run (about 2 min on one core):
#   /work/venv/bin/python tools/eval/photo_vae_diagnosis.py --model models/photo-vae --heldout data/photos/heldout \
#       --train data/photos32/train [--tiles 32 64] [--check-ldm .build/release/ldm] [--json out.json]
import argparse
import glob
import json
import os
import subprocess
import tempfile

import numpy as np
import torch
from diffusers import AutoencoderKL
from PIL import Image
from skimage.color import rgb2hsv
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

LUMA = np.array([0.299, 0.587, 0.114])
BINS = [0, 51, 102, 153, 204, 256]
PROBES = {"black": (0, 0, 0), "grey64": (64, 64, 64), "grey128": (128, 128, 128), "grey192": (192, 192, 192),
          "white": (255, 255, 255), "red": (220, 30, 30), "green": (30, 160, 50), "blue": (30, 70, 220),
          "skin": (224, 172, 140), "sky": (120, 170, 230)}


def load_vae(folder):
    path = os.path.join(folder, "vae") if os.path.isdir(os.path.join(folder, "vae")) else folder
    vae = AutoencoderKL.from_pretrained(path, torch_dtype=torch.float32)
    return vae.eval()


@torch.no_grad()
def reconstruct(vae, a):
    """uint8 HxWx3 -> uint8 HxWx3 through encode (posterior mode) and decode; also the latent mean / logvar."""
    x = torch.from_numpy(a.astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
    post = vae.encode(x).latent_dist
    y = vae.decode(post.mode()).sample[0].permute(1, 2, 0).numpy()
    # diffusers' postprocess: (y / 2 + 0.5).clamp(0, 1) -> * 255 -> round
    return np.round(np.clip(y / 2 + 0.5, 0, 1) * 255).astype(np.uint8), post.mean, post.logvar


def reconstruct_tiled(vae, a, t):
    """Each T x T tile encoded and decoded on its own (edge tiles shifted inside the image)."""
    h, w = a.shape[:2]
    out = np.zeros_like(a)
    ys = list(range(0, h - t + 1, t)) + ([h - t] if h % t else [])
    xs = list(range(0, w - t + 1, t)) + ([w - t] if w % t else [])
    for y in ys:
        for x in xs:
            out[y:y + t, x:x + t] = reconstruct(vae, np.ascontiguousarray(a[y:y + t, x:x + t]))[0]
    return out


def colour_fit(a, r):
    """Least-squares 3x3 + bias map from the reconstruction to the input, applied to the reconstruction."""
    X = np.concatenate([r.reshape(-1, 3).astype(np.float64), np.ones((r.size // 3, 1))], axis=1)
    M, *_ = np.linalg.lstsq(X, a.reshape(-1, 3).astype(np.float64), rcond=None)
    return np.clip(np.round(X @ M), 0, 255).reshape(a.shape).astype(np.uint8)


def metrics(a, r):
    psnr = float(peak_signal_noise_ratio(a, r, data_range=255))
    ssim = float(structural_similarity(a, r, data_range=255, channel_axis=2))
    d = r.astype(np.float64) - a.astype(np.float64)
    off = d.reshape(-1, 3).mean(axis=0)
    r0 = np.clip(np.round(r.astype(np.float64) - off), 0, 255).astype(np.uint8)
    luma = a.astype(np.float64) @ LUMA
    per_bin = []
    for lo, hi in zip(BINS[:-1], BINS[1:]):
        m = (luma >= lo) & (luma < hi)
        per_bin.append({"luma": [lo, hi - 1], "share": round(float(m.mean()), 3),
                        "offset": [round(float(v), 1) for v in d[m].mean(axis=0)] if m.any() else None})
    sat_in = float(rgb2hsv(a)[..., 1].mean())
    sat_out = float(rgb2hsv(r)[..., 1].mean())
    return {"psnr": round(psnr, 2), "ssim": round(ssim, 3), "offset_rgb": [round(float(v), 1) for v in off],
            "max_abs_offset": round(float(np.abs(off).max()), 1),
            "psnr_offset_removed": round(float(peak_signal_noise_ratio(a, r0, data_range=255)), 2),
            "psnr_colour_fit": round(float(peak_signal_noise_ratio(a, colour_fit(a, r), data_range=255)), 2),
            "mean_abs_error": round(float(np.abs(d).mean()), 2),
            "contrast_ratio": round(float(r.astype(np.float64).std() / max(a.astype(np.float64).std(), 1e-6)), 3),
            "saturation_in_out": [round(sat_in, 3), round(sat_out, 3)], "offset_by_luma": per_bin}


def bicubic(a, factor):
    h, w = a.shape[:2]
    small = Image.fromarray(a).resize((max(1, round(w / factor)), max(1, round(h / factor))), Image.BICUBIC)
    return np.asarray(small.resize((w, h), Image.BICUBIC))


def data_stats(arrays):
    px = np.concatenate([a.reshape(-1, 3) for a in arrays]).astype(np.float64)
    grey = np.mean([float(np.abs(a[..., 0].astype(int) - a[..., 1]).max() <= 2 and
                          np.abs(a[..., 1].astype(int) - a[..., 2]).max() <= 2) for a in arrays])
    sat = np.mean([float(rgb2hsv(a)[..., 1].mean()) for a in arrays])
    return {"mean_rgb": [round(float(v), 1) for v in px.mean(axis=0)],
            "std_rgb": [round(float(v), 1) for v in px.std(axis=0)],
            "mean_saturation": round(float(sat), 3), "grey_share": round(float(grey), 3), "images": len(arrays)}


def main():
    ap = argparse.ArgumentParser(description="Where the photo autoencoder's errors come from.")
    ap.add_argument("--model", required=True)
    ap.add_argument("--heldout", required=True, help="folder of held-out PNGs")
    ap.add_argument("--train", help="folder of training crops (<photo>-NNNN.png)")
    ap.add_argument("--per-source", type=int, default=24, help="training crops per source photo to reconstruct")
    ap.add_argument("--tiles", type=int, nargs="*", default=[], help="also reconstruct in independent T x T tiles")
    ap.add_argument("--probe-sizes", type=int, nargs="*", default=[32, 128, 512])
    ap.add_argument("--check-ldm", help="ldm binary: compare diffusers' reconstruction with `ldm autoencode`")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    vae = load_vae(a.model)
    res = {"model": a.model, "heldout": {}, "tiled": {}, "bicubic": {}}

    held = {os.path.splitext(os.path.basename(p))[0]: np.asarray(Image.open(p).convert("RGB"))
            for p in sorted(glob.glob(os.path.join(a.heldout, "*.png")))}
    for name, img in held.items():
        rec, mean, logvar = reconstruct(vae, img)
        m = metrics(img, rec)
        m["latent_mean_std"] = [round(float(v), 3) for v in mean[0].std(dim=(1, 2))]
        m["latent_posterior_std"] = round(float(torch.exp(0.5 * logvar).mean()), 4)
        res["heldout"][name] = m
        print("%-10s PSNR %.2f SSIM %.3f offset RGB %s  PSNR offset removed %.2f, colour-fit %.2f, contrast x%.2f, "
              "saturation %s" % (name, m["psnr"], m["ssim"], m["offset_rgb"], m["psnr_offset_removed"],
                                  m["psnr_colour_fit"], m["contrast_ratio"], m["saturation_in_out"]))
        print("           offset by input luma: %s" % "  ".join(
            "%d-%d (%d%%): %s" % (b["luma"][0], b["luma"][1], round(100 * b["share"]), b["offset"])
            for b in m["offset_by_luma"]))
        res["bicubic"][name] = {}
        for f in (4, 3.4641):
            bm = bicubic(img, f)
            res["bicubic"][name][str(f)] = {
                "psnr": round(float(peak_signal_noise_ratio(img, bm, data_range=255)), 2),
                "ssim": round(float(structural_similarity(img, bm, data_range=255, channel_axis=2)), 3),
                "max_abs_offset": round(float(np.abs((bm.astype(float) - img).reshape(-1, 3).mean(0)).max()), 2)}
        print("           bicubic x4 %s, x3.46 %s" % (res["bicubic"][name]["4"], res["bicubic"][name]["3.4641"]))
        for t in a.tiles:
            tm = metrics(img, reconstruct_tiled(vae, img, t))
            res["tiled"].setdefault(str(t), {})[name] = tm
            print("           %dx%d tiles: PSNR %.2f SSIM %.3f offset RGB %s" % (t, t, tm["psnr"], tm["ssim"],
                                                                           tm["offset_rgb"]))
        if a.check_ldm:
            with tempfile.TemporaryDirectory() as d:
                src, dst = os.path.join(d, "in.png"), os.path.join(d, "out.png")
                Image.fromarray(img).save(src)
                subprocess.run([a.check_ldm, "autoencode", "--model", a.model, "--input", src, "--output", dst,
                                "--tiled", "never"], check=True, capture_output=True)
                ours = np.asarray(Image.open(dst).convert("RGB"))
                res["heldout"][name]["ldm_vs_diffusers"] = {
                    "psnr": round(float(peak_signal_noise_ratio(rec, ours, data_range=255)), 2),
                    "max_abs_diff": int(np.abs(rec.astype(int) - ours).max()),
                    "ldm_psnr": round(float(peak_signal_noise_ratio(img, ours, data_range=255)), 2)}
                print("           ldm autoencode vs diffusers: %s" % res["heldout"][name]["ldm_vs_diffusers"])

    if a.train:
        files = sorted(glob.glob(os.path.join(a.train, "*.png")))
        by_src = {}
        for p in files:
            by_src.setdefault(os.path.basename(p).rsplit("-", 1)[0], []).append(p)
        res["train"], arrays = {}, []
        for src, ps in sorted(by_src.items()):
            ms = []
            for p in ps[:a.per_source]:
                img = np.asarray(Image.open(p).convert("RGB"))
                arrays.append(img)
                ms.append(metrics(img, reconstruct(vae, img)[0]))
            res["train"][src] = {"crops": len(ms), "psnr": round(float(np.mean([m["psnr"] for m in ms])), 2),
                                 "offset_rgb": [round(float(np.mean([m["offset_rgb"][c] for m in ms])), 1)
                                                for c in range(3)],
                                 "mean_abs_offset": round(float(np.mean([np.abs(m["offset_rgb"]).mean() for m in ms])), 1),
                                 "max_abs_offset": round(float(np.max([m["max_abs_offset"] for m in ms])), 1)}
            print("train %-22s PSNR %.2f mean offset RGB %s mean |offset| %.1f max %.1f" % (
                src, res["train"][src]["psnr"], res["train"][src]["offset_rgb"], res["train"][src]["mean_abs_offset"],
                res["train"][src]["max_abs_offset"]))
        res["data"] = {"train_crops": data_stats([np.asarray(Image.open(p).convert("RGB")) for p in files]),
                       "heldout": data_stats(list(held.values()))}
        print("data: training crops %s\n      held-out photos %s" % (res["data"]["train_crops"], res["data"]["heldout"]))

    res["probes"] = {}
    for s in a.probe_sizes:
        row = {}
        for name, rgb in PROBES.items():
            img = np.empty((s, s, 3), np.uint8)
            img[:] = rgb
            rec = reconstruct(vae, img)[0]
            row[name] = {"in": list(rgb), "out": [round(float(v), 1) for v in rec.reshape(-1, 3).mean(axis=0)]}
        res["probes"][str(s)] = row
        print("flat probes %dx%d: %s" % (s, s, "  ".join("%s %s->%s" % (k, v["in"], [round(x) for x in v["out"]])
                                                          for k, v in row.items())))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
        print("wrote", a.json)


if __name__ == "__main__":
    main()
