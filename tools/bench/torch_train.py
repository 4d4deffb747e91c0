"""PyTorch side of `ldm bench train`: one full training step of a diffusers UNet, timed as our Trainer's step.

Usage: python tools/bench/torch_train.py THREADS SPEC_JSON   (called by `ldm bench train` when LDM_TORCH_PYTHON is set)

SPEC_JSON (written by `ldm bench train`, so both sides build the same models from the same config dictionaries):
  unet: diffusers config dict with "_class_name" UNet2DModel or UNet2DConditionModel
  vae: AutoencoderKL config dict or null (frozen first stage: the step then starts from images and encodes them)
  batch, latent [C, H, W], image [C, H, W] (with a vae), context [S, D] or null, classes (labels drawn below) or null,
  dataset (examples held in memory), warmup, steps, lr, max_grad_norm, scale_factor, beta_start, beta_end, timesteps

One step, as ldm's Trainer.trainStep with EMA off: zero_grad(set_to_none) -> batch from an in-memory dataset ->
(no_grad VAE encode + posterior sample) * scale_factor -> t = randint(0, T, (B,)), noise = randn -> q_sample ->
UNet -> MSE to the noise -> loss.item() -> backward -> clip_grad_norm_ -> AdamW.step.
Prints JSON {seconds: median step time after the warm-up steps, peak_rss_mb, times: [...]}.
"""
import json, resource, sys, time
import torch
import torch.nn.functional as F

threads, spec = int(sys.argv[1]), json.loads(sys.argv[2])
torch.set_num_threads(threads)
torch.manual_seed(0)

import diffusers

unet_cfg = dict(spec["unet"])
unet = getattr(diffusers, unet_cfg.pop("_class_name")).from_config(unet_cfg)
unet.train()
vae = None
if spec.get("vae"):
    vae_cfg = dict(spec["vae"]); vae_cfg.pop("_class_name", None)
    vae = diffusers.AutoencoderKL.from_config(vae_cfg).eval().requires_grad_(False)

b, n = spec["batch"], spec["dataset"]
data = torch.rand(n, *spec["image"]) * 2 - 1 if vae is not None else torch.randn(n, *spec["latent"])
labels = torch.randint(0, spec["classes"], (n,)) if spec.get("classes") else None
context = torch.randn(b, *spec["context"]) if spec.get("context") else None  # one fixed context batch, as ours

T = spec["timesteps"]
betas = torch.linspace(spec["beta_start"] ** 0.5, spec["beta_end"] ** 0.5, T, dtype=torch.float32) ** 2
acp = torch.cumprod(1 - betas, 0)
sqrt_acp, sqrt_1macp = acp.sqrt(), (1 - acp).sqrt()

params = [p for p in unet.parameters() if p.requires_grad]
opt = torch.optim.AdamW(params, lr=spec["lr"], betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)
perm, pos = torch.randperm(n), 0


def step():
    global perm, pos
    opt.zero_grad(set_to_none=True)
    if pos + b > n:
        perm, pos = torch.randperm(n), 0
    idx = perm[pos:pos + b]; pos += b
    x = data[idx]
    if vae is not None:
        with torch.no_grad():
            x = vae.encode(x).latent_dist.sample()
    z = x * spec["scale_factor"]
    t = torch.randint(0, T, (b,))
    noise = torch.randn_like(z)
    noisy = sqrt_acp[t].view(-1, 1, 1, 1) * z + sqrt_1macp[t].view(-1, 1, 1, 1) * noise
    kwargs = {}
    if labels is not None:
        kwargs["class_labels"] = labels[idx]
    if context is not None:
        kwargs["encoder_hidden_states"] = context
    out = unet(noisy, t, **kwargs).sample
    loss = F.mse_loss(out, noise)
    if not torch.isfinite(loss).item():
        raise SystemExit(f"loss is {loss.item()}")
    loss.backward()
    if spec.get("max_grad_norm"):
        torch.nn.utils.clip_grad_norm_(params, spec["max_grad_norm"])
    opt.step()


times = []
for i in range(spec["warmup"] + spec["steps"]):
    t0 = time.perf_counter(); step(); dt = time.perf_counter() - t0
    if i >= spec["warmup"]:
        times.append(dt)
print(json.dumps({"seconds": sorted(times)[len(times) // 2], "times": times,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
