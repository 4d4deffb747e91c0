"""PyTorch side of `ldm bench vae` / `ldm bench unet`: one part per process so that peak RSS is the part's own.

Usage: python tools/bench/torch_models.py THREADS PART REPS
PART: vae-decode (1x4x64x64 -> 512x512), vae-encode (1x3x512x512), unet-f32 / unet-bf16 (SD-1.5 UNet, batch 2,
64x64x4 latent, 77x768 context), sd15-lcm4 (`ldm bench lcm`: SD-1.5 UNet sampled by LCMScheduler for 4 steps at guidance 1,
batch 1, then the SD VAE decode: seconds per 512x512 image). Random weights (diffusers default configs). Prints JSON {seconds, peak_rss_mb}.
"""
import json, resource, sys, time
import torch

threads, part, reps = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
torch.set_num_threads(threads)
torch.manual_seed(0)


def timed(fn):
    fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter(); fn(); ts.append(time.perf_counter() - t)
    return sorted(ts)[len(ts) // 2]


with torch.inference_mode():
    if part == "sd15-lcm4":
        from diffusers import AutoencoderKL, LCMScheduler, UNet2DConditionModel
        unet = UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8).eval()
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4).eval()
        sched = LCMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", set_alpha_to_one=False,
                             steps_offset=1)
        c = torch.randn(1, 77, 768)
        g = torch.Generator().manual_seed(0)

        def image():
            sched.set_timesteps(4)
            x = torch.randn(1, 4, 64, 64, generator=g)
            for t in sched.timesteps:
                x = sched.step(unet(x, t, encoder_hidden_states=c).sample, t, x, generator=g).prev_sample
            return vae.decode(x / 0.18215).sample
        secs = timed(image)
    elif part.startswith("vae"):
        from diffusers import AutoencoderKL
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4).eval()
        if part == "vae-decode":
            z = torch.randn(1, 4, 64, 64)
            secs = timed(lambda: vae.decode(z).sample)
        else:
            x = torch.randn(1, 3, 512, 512)
            secs = timed(lambda: vae.encode(x).latent_dist.mean)
    else:
        from diffusers import UNet2DConditionModel
        unet = UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8).eval()
        dt = torch.bfloat16 if part == "unet-bf16" else torch.float32
        unet = unet.to(dt)
        x = torch.randn(2, 4, 64, 64, dtype=dt); c = torch.randn(2, 77, 768, dtype=dt)
        secs = timed(lambda: unet(x, 500, encoder_hidden_states=c).sample)
print(json.dumps({"seconds": secs, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
