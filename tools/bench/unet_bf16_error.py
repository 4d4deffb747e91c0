"""Full-size bf16 error fixture (issue 20): a random-weight SD-1.5 UNet (diffusers' config and init, seed 0) saved as a
diffusers folder, one input (batch 1, 64x64 latent, timestep 500, 77x768 context), its float32 output and PyTorch's
bf16 output (unet.to(torch.bfloat16), as `ldm bench unet`'s bf16 side). UNetNativeBF16Tests.testFullSizeSD15Error
reads the folder named by LDM_SD15_BF16_ERROR (it skips without it) and compares our bf16 error against PyTorch's.
Files: about 3.4 GB, so written outside the repository.

Usage: /path/to/venv/bin/python tools/bench/unet_bf16_error.py /tmp/sd15-bf16-error
"""
import json
import os
import sys

import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
torch.manual_seed(0)
config = dict(sample_size=64, in_channels=4, out_channels=4, cross_attention_dim=768, attention_head_dim=8,
              block_out_channels=(320, 640, 1280, 1280), layers_per_block=2)
unet = UNet2DConditionModel(**config).eval()
unet.save_pretrained(out, safe_serialization=True)
g = torch.Generator().manual_seed(1)
sample = torch.randn(1, 4, 64, 64, generator=g)
context = torch.randn(1, 77, 768, generator=g)
timestep = torch.tensor([500.0])
with torch.no_grad():
    f32 = unet(sample, timestep, encoder_hidden_states=context).sample
    b = unet.to(torch.bfloat16)
    bf16 = b(sample.bfloat16(), timestep, encoder_hidden_states=context.bfloat16()).sample.float()
save_file({"sample": sample, "encoder_hidden_states": context, "timestep": timestep, "out": f32, "bf16_compute": bf16},
          os.path.join(out, "io.safetensors"))
scale = f32.abs().max().item()
print(json.dumps({"torch_bf16_max_rel": (bf16 - f32).abs().max().item() / scale,
                  "torch_bf16_l2_rel": ((bf16 - f32).norm() / f32.norm()).item()}))
