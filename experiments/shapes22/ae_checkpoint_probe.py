# Issue 22 probe: reconstruct the shapes grid (tools/eval/shapes_diagnosis.py grid) with an autoencoder TRAINING
# CHECKPOINT (RUN_DIR/checkpoints/step-N.safetensors, `model.*` tensors) or an exported diffusers folder, through
# diffusers' AutoencoderKL in float32 (an implementation independent of ours; encode -> posterior mode -> decode), so a
# run can be judged with tools/eval/shapes_eval.py while it trains, without exporting it.
# Run: /work/venv/bin/python experiments/shapes22/ae_checkpoint_probe.py CKPT_OR_FOLDER CONFIG.json GRID_DIR OUT_DIR
import sys, json, os, glob, torch, numpy as np
from PIL import Image
from safetensors.torch import load_file
from diffusers import AutoencoderKL
torch.set_num_threads(1)
ckpt, cfg, grid, out = sys.argv[1:5]
if os.path.isdir(ckpt):
    vae = AutoencoderKL.from_pretrained(ckpt, torch_dtype=torch.float32)
else:
    mc = json.load(open(cfg))["model_config"]
    vae = AutoencoderKL(**{k: v for k, v in mc.items() if not k.startswith("_")})
    sd = {k[6:]: v.float() for k, v in load_file(ckpt).items() if k.startswith("model.")}
    missing, unexpected = vae.load_state_dict(sd, strict=False)
    assert not unexpected, unexpected
    assert not missing, missing
vae.eval(); os.makedirs(out, exist_ok=True)
files = sorted(glob.glob(grid + "/*.png"))
with torch.no_grad():
    for i in range(0, len(files), 128):
        fs = files[i:i+128]
        x = torch.tensor(np.stack([np.asarray(Image.open(f).convert("RGB")) for f in fs])).permute(0, 3, 1, 2).float() / 127.5 - 1
        y = vae.decode(vae.encode(x).latent_dist.mode()).sample
        y = ((y.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
        for f, a in zip(fs, y): Image.fromarray(a).save(os.path.join(out, os.path.basename(f)))
