"""PyTorch side of `ldm bench core`: times the same ops with the same shapes and thread count, prints JSON.

Usage: python tools/bench/torch_core.py THREADS [GROUPS]  (called by `ldm bench core` when LDM_TORCH_PYTHON is set;
GROUPS: comma-separated matmul, conv, convs, attention, norm as `ldm bench core --ops`)
"""
import json, sys, time
import torch
import torch.nn.functional as F

torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
torch.manual_seed(0)
groups = set((sys.argv[2] if len(sys.argv) > 2 else "matmul,conv,convs,attention,norm").split(","))
CONV_SHAPES = [(2, 320, 64), (2, 640, 32), (2, 1280, 16), (2, 1280, 8), (1, 128, 256), (1, 512, 64)]  # as BenchCore.convShapes


def bench(fn, reps=5):
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter(); fn(); times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


out = {}
with torch.inference_mode():
    for dt, name in ((torch.float32, "f32"), (torch.bfloat16, "bf16")):
        if "matmul" in groups:
            a = torch.randn(2048, 2048).to(dt); b = torch.randn(2048, 2048).to(dt)
            out[f"matmul_{name}"] = bench(lambda: a @ b)
        if "conv" in groups:
            x = torch.randn(1, 320, 64, 64).to(dt); w = torch.randn(320, 320, 3, 3).to(dt); bias = torch.randn(320).to(dt)
            out[f"conv_{name}"] = bench(lambda: F.conv2d(x, w, bias, padding=1))
    if "convs" in groups:
        for n, c, size in CONV_SHAPES:
            x = torch.randn(n, c, size, size); w = torch.randn(c, c, 3, 3) * 0.02; bias = torch.randn(c)
            out[f"conv_{n}x{c}x{size}"] = bench(lambda: F.conv2d(x, w, bias, padding=1))
    if "attention" in groups:
        for heads, d in ((8, 40), (1, 512)):
            q = torch.randn(1, heads, 4096, d); k = torch.randn(1, heads, 4096, d); v = torch.randn(1, heads, 4096, d)
            out[f"attention_{heads}x{d}"] = bench(lambda: F.scaled_dot_product_attention(q, k, v), reps=3)
    if "norm" in groups:
        x = torch.randn(1, 320, 64, 64); g = torch.randn(320); bb = torch.randn(320)
        out["groupnorm_silu"] = bench(lambda: F.silu(F.group_norm(x, 32, g, bb, 1e-6)), reps=20)
        out["copy"] = bench(lambda: x.clone(), reps=20)
print(json.dumps(out))
