"""Relative error of a 3x3 convolution computed by Winograd F(4x4, 3x3) with its transformed operands rounded to
bfloat16 (what a vdpbf16ps Winograd GEMM would compute), against the same convolution in float64, next to the error
of the direct bf16 convolution (bf16 inputs and weights, exact accumulation: oneDNN's / PyTorch's bf16 kernels).
Used for docs/benchmarks.md (issue 20): it decides whether a bf16 Winograd GEMM keeps bf16 accuracy.

Usage: python tools/bench/winograd_bf16_error.py   (numpy only; a few seconds)
"""
import numpy as np

rng = np.random.default_rng(0)


def bf16(a):
    """float32 values rounded to the nearest bfloat16 (ties to even), as float32."""
    u = np.asarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return (((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16).astype(np.uint32).view(np.float32)


# Lavin & Gray's F(4x4, 3x3) matrices with the points 0, +-1, +-2, inf (as Sources/CKernels/winograd_body.h).
BT = np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0],
               [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], np.float64)
G = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
              [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], np.float64)
AT = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]], np.float64)

C, O, H = 128, 64, 16
x = rng.standard_normal((C, H + 2, H + 2))
x[:, 0, :] = x[:, -1, :] = x[:, :, 0] = x[:, :, -1] = 0  # padding 1
x = x / (1 + np.exp(-x))  # SiLU'd activations, as after GroupNorm + SiLU
w = rng.standard_normal((O, C, 3, 3)) / np.sqrt(C * 9)


def direct(x, w):
    y = np.zeros((O, H, H))
    for i in range(3):
        for j in range(3):
            y += np.einsum('oc,chw->ohw', w[:, :, i, j], x[:, i:i + H, j:j + H])
    return y


def winograd(x, w, round_v, round_u):
    u = np.einsum('ai,ocij,bj->ocab', G, w, G)
    if round_u:
        u = bf16(u).astype(np.float64)
    y = np.zeros((O, H, H))
    for ty in range(H // 4):
        for tx in range(H // 4):
            v = np.einsum('ai,cij,bj->cab', BT, x[:, ty * 4:ty * 4 + 6, tx * 4:tx * 4 + 6], BT)
            if round_v:
                v = bf16(v).astype(np.float64)
            y[:, ty * 4:ty * 4 + 4, tx * 4:tx * 4 + 4] = np.einsum('ia,oab,jb->oij', AT, np.einsum('ocab,cab->oab', u, v), AT)
    return y


ref = direct(x, w)
wb = bf16(w).astype(np.float64)
err = lambda y: np.linalg.norm(y - ref) / np.linalg.norm(ref)
print(f"direct bf16 (bf16 x and w):                        {err(direct(bf16(x).astype(np.float64), wb)):.5f}")
print(f"Winograd, float32 x, bf16 w, V and U exact:         {err(winograd(x, wb, False, False)):.5f}")
print(f"Winograd, V and U rounded to bf16 (vdpbf16ps GEMM): {err(winograd(x, wb, True, True)):.5f}")
print(f"Winograd, V rounded to bf16 only:                   {err(winograd(x, wb, True, False)):.5f}")
print(f"Winograd, U rounded to bf16 only:                   {err(winograd(x, wb, False, True)):.5f}")
