"""PyTorch side of `ldm bench vae` / `ldm bench unet`: one part per process so that peak RSS is the part's own.

Usage: python tools/bench/torch_models.py THREADS PART REPS
PART: vae-decode (1x4x64x64 -> 512x512), vae-encode (1x3x512x512), unet-f32 / unet-bf16 / unet-int8-dynamic (SD-1.5 UNet, batch 2,
64x64x4 latent, 77x768 context), sd15-lcm4 (`ldm bench lcm`: SD-1.5 UNet sampled by LCMScheduler for 4 steps at guidance 1,
batch 1, then the SD VAE decode: seconds per 512x512 image). Random weights (diffusers default configs). Prints JSON {seconds, peak_rss_mb}.
`ldm bench sdxl`: sdxl-config prints the SDXL base UNet's full config.json (SDXL_UNET below, the values of
stabilityai/stable-diffusion-xl-base-1.0/unet/config.json, completed with diffusers' defaults) for our side to build the
same model; sdxl-unet-64 / sdxl-unet-128 (f32) and sdxl-unet-128-bf16 (weights and compute in bf16) time one UNet call
of batch 2 (classifier-free guidance) on a 64x64 or 128x128 latent with a 77x2048 context, pooled 1280 and 6 time ids;
their peak_rss_mb is the peak during the calls (VmHWM reset after the model is built and converted).
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


SDXL_UNET = dict(sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
                 use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816)


def hwm_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024


with torch.inference_mode():
    if part == "sdxl-config":
        import inspect
        from diffusers import UNet2DConditionModel
        # what save_config writes: every __init__ argument, the defaults for those not given (no 10 GB model built)
        params = inspect.signature(UNet2DConditionModel.__init__).parameters
        config = {k: v.default for k, v in params.items() if k != "self" and v.default is not inspect.Parameter.empty}
        config.update(SDXL_UNET)
        print(json.dumps(dict(_class_name="UNet2DConditionModel", **config)))
        sys.exit(0)
    elif part.startswith("sdxl-unet"):
        from diffusers import UNet2DConditionModel
        unet = UNet2DConditionModel(**SDXL_UNET).eval()
        dt = torch.bfloat16 if part.endswith("bf16") else torch.float32
        unet = unet.to(dt)
        n = 128 if "-128" in part else 64
        x = torch.randn(2, 4, n, n, dtype=dt); c = torch.randn(2, 77, 2048, dtype=dt)
        added = dict(text_embeds=torch.randn(2, 1280, dtype=dt), time_ids=torch.tensor([[8. * n, 8. * n, 0, 0, 8. * n, 8. * n]] * 2, dtype=dt))
        open("/proc/self/clear_refs", "w").write("5")
        secs = timed(lambda: unet(x, 500, encoder_hidden_states=c, added_cond_kwargs=added).sample)
        print(json.dumps({"seconds": secs, "peak_rss_mb": hwm_mb()}))
        sys.exit(0)
    elif part == "sd15-lcm4":
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
        if part == "unet-int8-dynamic":
            # PyTorch's int8 CPU recipe: dynamic quantisation, per-channel qint8 weights, Linear layers only.
            from torch.ao.quantization import quantize_dynamic, per_channel_dynamic_qconfig
            unet = quantize_dynamic(unet, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)
        x = torch.randn(2, 4, 64, 64, dtype=dt); c = torch.randn(2, 77, 768, dtype=dt)
        secs = timed(lambda: unet(x, 500, encoder_hidden_states=c).sample)
print(json.dumps({"seconds": secs, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
