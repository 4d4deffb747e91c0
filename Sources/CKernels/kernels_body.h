// See include/ckernels.h. Written with Clang/GCC vector extensions (8 float lanes); isa_dispatch.c compiles this body
// for AVX-512, AVX2+FMA and baseline x86-64, so the same source runs 8 lanes wide in one instruction on AVX2
// and as two 4-lane halves on SSE2. The math matches FastMath.swift (same constants, same polynomial).
#include "ckernels.h"
#include <math.h>
#include <string.h>

#include "simd.h"

/// Loads n < 8 floats, the other lanes `fill`.
#define LOAD_PART(p, n, fill) ({ float lp_[8]; for (int k_ = 0; k_ < 8; k_++) lp_[k_] = (fill); \
    memcpy(lp_, (p), (size_t)(n) * sizeof(float)); LOAD(lp_); })
#define STORE_PART(p, v, n) do { float sp_[8]; STORE(sp_, (v)); memcpy((p), sp_, (size_t)(n) * sizeof(float)); } while (0)
#define SELECT(m, a, b) ((v8f)(((v8i)(a) & (m)) | ((v8i)(b) & ~(m))))
#define VMIN(a, b) ({ v8f mi_a = (a), mi_b = (b); SELECT(mi_a < mi_b, mi_a, mi_b); })
#define VMAX(a, b) ({ v8f ma_a = (a), ma_b = (b); SELECT(ma_a > ma_b, ma_a, ma_b); })
#define VABS(a) ((v8f)((v8i)(a) & 0x7fffffff))
/// The non-negative a with the sign of s.
#define VCOPYSIGN(a, s) ((v8f)((v8i)(a) | ((v8i)(s) & (int)0x80000000)))
#define HSUM(v) ({ v8f h_ = (v); ((h_[0] + h_[4]) + (h_[1] + h_[5])) + ((h_[2] + h_[6]) + (h_[3] + h_[7])); })

// y * 2^n for the exponent n (as float and as integer bits): on AVX-512 one vscalefps, elsewhere two multiplies by
// powers of two built in the exponent field (in two halves so that n = 128 does not overflow it). Both are exact
// for normal results and round once for subnormal ones, so every level gives the same values.
#undef VEXP_SCALE
#if CK_LEVEL >= 2
#define VEXP_SCALE(y, n, bits) ((v8f)_mm256_scalef_ps((__m256)(y), (__m256)(n)))
#else
#define VEXP_SCALE(y, n, bits) ({ v8i es_half = (bits) >> 1; \
    (y) * (v8f)((es_half + 127) << 23) * (v8f)(((bits) - es_half + 127) << 23); })
#endif
// Cephes expf: Cody-Waite range reduction, degree-5 polynomial; the power of two is applied in two halves so that
// n = 128 does not overflow the exponent field.
#define VEXP(arg) ({ \
    v8f e_x = VMAX(VMIN((arg), SPLAT(88.72283f)), SPLAT(-87.33654f)); \
    v8f e_t = e_x * 1.442695041f + 12582912.0f; \
    v8f e_n = e_t - 12582912.0f; \
    v8i e_bits = (v8i)e_t - 0x4B400000; \
    v8f e_r = e_x - e_n * 0.693359375f + e_n * 2.12194440e-4f; \
    v8f e_p = e_r * 1.9875691500e-4f + 1.3981999507e-3f; \
    e_p = e_p * e_r + 8.3334519073e-3f; \
    e_p = e_p * e_r + 4.1665795894e-2f; \
    e_p = e_p * e_r + 1.6666665459e-1f; \
    e_p = e_p * e_r + 5.0000001201e-1f; \
    v8f e_y = e_p * (e_r * e_r) + e_r + 1.0f; \
    VEXP_SCALE(e_y, e_n, e_bits); })
#define VSIGMOID(arg) (1.0f / (1.0f + VEXP(-(arg))))
#define VTANH(arg) ({ v8f th_x = (arg); v8f th_e = VEXP(-2.0f * VMIN(VABS(th_x), SPLAT(9.0f))); \
    VCOPYSIGN((1.0f - th_e) / (1.0f + th_e), th_x); })
#define VERF(arg) ({ v8f er_x = (arg), er_a = VABS(er_x); \
    v8f er_t = 1.0f / (1.0f + 0.3275911f * er_a); \
    v8f er_p = er_t * 1.061405429f - 1.453152027f; \
    er_p = er_p * er_t + 1.421413741f; \
    er_p = er_p * er_t - 0.284496736f; \
    er_p = er_p * er_t + 0.254829592f; \
    VCOPYSIGN(1.0f - er_p * er_t * VEXP(-er_a * er_a), er_x); })

#define GELU_K 0.7978845608f // sqrt(2/pi)

#define ACT_FORWARD(op, arg) ({ v8f af_x = (arg), af_y; \
    switch (op) { \
    case CK_SILU: af_y = af_x * VSIGMOID(af_x); break; \
    case CK_GELU_ERF: af_y = 0.5f * af_x * (1.0f + VERF(af_x * 0.7071067812f)); break; \
    case CK_GELU_TANH: af_y = 0.5f * af_x * (1.0f + VTANH(GELU_K * (af_x + 0.044715f * af_x * af_x * af_x))); break; \
    case CK_QUICK_GELU: af_y = af_x * VSIGMOID(1.702f * af_x); break; \
    case CK_SIGMOID: af_y = VSIGMOID(af_x); break; \
    default: af_y = VTANH(af_x); break; \
    } af_y; })
#define ACT_DERIVATIVE(op, arg) ({ v8f ad_x = (arg), ad_y; \
    switch (op) { \
    case CK_SILU: { v8f ad_s = VSIGMOID(ad_x); ad_y = ad_s * (1.0f + ad_x * (1.0f - ad_s)); break; } \
    case CK_GELU_ERF: ad_y = 0.5f * (1.0f + VERF(ad_x * 0.7071067812f)) + ad_x * 0.3989422804f * VEXP(-0.5f * ad_x * ad_x); break; \
    case CK_GELU_TANH: { v8f ad_t = VTANH(GELU_K * (ad_x + 0.044715f * ad_x * ad_x * ad_x)); \
        ad_y = 0.5f * (1.0f + ad_t) + 0.5f * ad_x * (1.0f - ad_t * ad_t) * GELU_K * (1.0f + 3.0f * 0.044715f * ad_x * ad_x); break; } \
    case CK_QUICK_GELU: { v8f ad_s = VSIGMOID(1.702f * ad_x); ad_y = ad_s + 1.702f * ad_x * ad_s * (1.0f - ad_s); break; } \
    case CK_SIGMOID: { v8f ad_s = VSIGMOID(ad_x); ad_y = ad_s * (1.0f - ad_s); break; } \
    default: { v8f ad_t = VTANH(ad_x); ad_y = 1.0f - ad_t * ad_t; break; } \
    } ad_y; })

// One loop per activation (the switch is resolved outside the loop after inlining).
#define FOR_EACH_OP(OP, BODY) \
    switch (OP) { \
    case CK_SILU: { const ck_activation op_ = CK_SILU; BODY; break; } \
    case CK_GELU_ERF: { const ck_activation op_ = CK_GELU_ERF; BODY; break; } \
    case CK_GELU_TANH: { const ck_activation op_ = CK_GELU_TANH; BODY; break; } \
    case CK_QUICK_GELU: { const ck_activation op_ = CK_QUICK_GELU; BODY; break; } \
    case CK_SIGMOID: { const ck_activation op_ = CK_SIGMOID; BODY; break; } \
    case CK_TANH: { const ck_activation op_ = CK_TANH; BODY; break; } \
    }

CLONES void FN(ck_activation_forward)(ck_activation op, const float *x, float *y, long n) {
    FOR_EACH_OP(op, {
        long i = 0;
        for (; i + 8 <= n; i += 8) STORE(y + i, ACT_FORWARD(op_, LOAD(x + i)));
        if (i < n) STORE_PART(y + i, ACT_FORWARD(op_, LOAD_PART(x + i, n - i, 0.0f)), n - i);
    })
}

CLONES void FN(ck_activation_backward)(ck_activation op, const float *g, const float *x, float *dx, long n) {
    FOR_EACH_OP(op, {
        long i = 0;
        for (; i + 8 <= n; i += 8) STORE(dx + i, LOAD(g + i) * ACT_DERIVATIVE(op_, LOAD(x + i)));
        if (i < n) STORE_PART(dx + i, LOAD_PART(g + i, n - i, 0.0f) * ACT_DERIVATIVE(op_, LOAD_PART(x + i, n - i, 0.0f)), n - i);
    })
}

CLONES float FN(ck_max)(const float *x, long n) {
    v8f a = SPLAT(-INFINITY), b = SPLAT(-INFINITY);
    long i = 0;
    for (; i + 16 <= n; i += 16) { a = VMAX(a, LOAD(x + i)); b = VMAX(b, LOAD(x + i + 8)); }
    for (; i + 8 <= n; i += 8) a = VMAX(a, LOAD(x + i));
    if (i < n) b = VMAX(b, LOAD_PART(x + i, n - i, -INFINITY));
    v8f m = VMAX(a, b);
    float r = m[0];
    for (int k = 1; k < 8; k++) r = m[k] > r ? m[k] : r;
    return r;
}

CLONES float FN(ck_exp_shifted_sum)(float *x, long n, float shift) {
    v8f acc0 = SPLAT(0.0f), acc1 = SPLAT(0.0f), s = SPLAT(shift);
    long i = 0;
    for (; i + 16 <= n; i += 16) {
        v8f e0 = VEXP(LOAD(x + i) - s), e1 = VEXP(LOAD(x + i + 8) - s);
        STORE(x + i, e0); STORE(x + i + 8, e1);
        acc0 += e0; acc1 += e1;
    }
    for (; i + 8 <= n; i += 8) { v8f e = VEXP(LOAD(x + i) - s); STORE(x + i, e); acc0 += e; }
    if (i < n) {
        v8f e = VEXP(LOAD_PART(x + i, n - i, -INFINITY) - s); // padding lanes give exp(-inf) = 0 (clamped: ~1e-38)
        v8f keep = (v8f)((v8i)e & (v8i){0 < n - i ? -1 : 0, 1 < n - i ? -1 : 0, 2 < n - i ? -1 : 0, 3 < n - i ? -1 : 0,
                                        4 < n - i ? -1 : 0, 5 < n - i ? -1 : 0, 6 < n - i ? -1 : 0, 7 < n - i ? -1 : 0});
        STORE_PART(x + i, e, n - i);
        acc1 += keep;
    }
    return HSUM(acc0 + acc1);
}

CLONES void FN(ck_attention_backward_row)(float *p, float *ds, long n, float lse, float delta, long masked_from) {
    long lim = masked_from < n ? (masked_from < 0 ? 0 : masked_from) : n;
    v8f l = SPLAT(lse), d = SPLAT(delta);
    long i = 0;
    for (; i + 8 <= lim; i += 8) {
        v8f e = VEXP(LOAD(p + i) - l);
        STORE(p + i, e);
        STORE(ds + i, e * (LOAD(ds + i) - d));
    }
    if (i < lim) {
        long k = lim - i;
        v8f e = VEXP(LOAD_PART(p + i, k, 0.0f) - l);
        STORE_PART(p + i, e, k);
        STORE_PART(ds + i, e * (LOAD_PART(ds + i, k, 0.0f) - d), k);
    }
    if (lim < n) { memset(p + lim, 0, (size_t)(n - lim) * sizeof(float)); memset(ds + lim, 0, (size_t)(n - lim) * sizeof(float)); }
}

CLONES void FN(ck_group_stats)(const float *base, long channels, long spatial, float eps, float *mean, float *rstd) {
    // Per channel row: a float32 sum in four 8-lane accumulators; across rows in double. Then the squared deviations
    // from the mean the same way (two passes, as torch's CPU group norm). The squares are added as FMAs where the
    // level has them (AVX2, AVX-512) and rounded separately at baseline: the levels agree to rounding, not bit for bit.
    double s = 0.0;
    for (long c = 0; c < channels; c++) {
        const float *x = base + c * spatial;
        v8f a0 = SPLAT(0.0f), a1 = a0, a2 = a0, a3 = a0;
        long i = 0;
        for (; i + 32 <= spatial; i += 32) { a0 += LOAD(x + i); a1 += LOAD(x + i + 8); a2 += LOAD(x + i + 16); a3 += LOAD(x + i + 24); }
        for (; i + 8 <= spatial; i += 8) a0 += LOAD(x + i);
        float r = HSUM((a0 + a1) + (a2 + a3));
        for (; i < spatial; i++) r += x[i];
        s += r;
    }
    const float mu = (float)(s / (double)(channels * spatial));
    const v8f vmu = SPLAT(mu);
    double v = 0.0;
    for (long c = 0; c < channels; c++) {
        const float *x = base + c * spatial;
        v8f a0 = SPLAT(0.0f), a1 = a0;
        long i = 0;
        for (; i + 16 <= spatial; i += 16) { v8f d0 = LOAD(x + i) - vmu, d1 = LOAD(x + i + 8) - vmu; a0 += d0 * d0; a1 += d1 * d1; }
        for (; i + 8 <= spatial; i += 8) { v8f d0 = LOAD(x + i) - vmu; a0 += d0 * d0; }
        float r = HSUM(a0 + a1);
        for (; i < spatial; i++) { const float d = x[i] - mu; r += d * d; }
        v += r;
    }
    *mean = mu;
    *rstd = (float)(1.0 / sqrt(v / (double)(channels * spatial) + (double)eps));
}

CLONES void FN(ck_affine)(const float *x, float *y, long n, float a, float b, int silu) {
    v8f va = SPLAT(a), vb = SPLAT(b);
    long i = 0;
    if (silu) {
        for (; i + 8 <= n; i += 8) { v8f z = LOAD(x + i) * va + vb; STORE(y + i, z * VSIGMOID(z)); }
        if (i < n) { v8f z = LOAD_PART(x + i, n - i, 0.0f) * va + vb; STORE_PART(y + i, z * VSIGMOID(z), n - i); }
    } else {
        for (; i + 8 <= n; i += 8) STORE(y + i, LOAD(x + i) * va + vb);
        if (i < n) STORE_PART(y + i, LOAD_PART(x + i, n - i, 0.0f) * va + vb, n - i);
    }
}

CLONES void FN(ck_silu_affine_backward)(const float *x, const float *g, float *dy, long n, float za, float zb, float mu, float r,
                                    float *sum_dy, float *sum_dy_xhat) {
    v8f a = SPLAT(0.0f), b = SPLAT(0.0f), vza = SPLAT(za), vzb = SPLAT(zb), vmu = SPLAT(mu), vr = SPLAT(r);
    long i = 0;
    for (; i + 8 <= n; i += 8) {
        v8f xv = LOAD(x + i), z = xv * vza + vzb, s = VSIGMOID(z);
        v8f d = LOAD(g + i) * (s * (1.0f + z * (1.0f - s)));
        STORE(dy + i, d);
        a += d; b += d * ((xv - vmu) * vr);
    }
    if (i < n) {
        long k = n - i;
        v8f xv = LOAD_PART(x + i, k, mu), z = xv * vza + vzb, s = VSIGMOID(z);
        v8f d = LOAD_PART(g + i, k, 0.0f) * (s * (1.0f + z * (1.0f - s)));
        STORE_PART(dy + i, d, k);
        a += d; b += d * ((xv - vmu) * vr);
    }
    *sum_dy = HSUM(a); *sum_dy_xhat = HSUM(b);
}

// GEGLU (diffusers' activations.GEGLU with exact GELU): x rows hold [hidden | gate] (2n floats), y = hidden * gelu(gate).
CLONES void FN(ck_geglu_forward)(const float *x, float *y, long rows, long n) {
    for (long r = 0; r < rows; r++) {
        const float *h = x + r * 2 * n, *g = h + n;
        float *o = y + r * n;
        long i = 0;
        for (; i + 8 <= n; i += 8) STORE(o + i, LOAD(h + i) * ACT_FORWARD(CK_GELU_ERF, LOAD(g + i)));
        if (i < n) STORE_PART(o + i, LOAD_PART(h + i, n - i, 0.0f) * ACT_FORWARD(CK_GELU_ERF, LOAD_PART(g + i, n - i, 0.0f)), n - i);
    }
}

// ck_geglu_forward on x's values rounded to bfloat16, each result rounded to bfloat16 (nearest even) and stored as
// bfloat16: one pass for what rounding x, GEGLU and a bf16 GEMM's conversion of the result compute separately.
CLONES void FN(ck_geglu_forward_bf16)(const float *x, unsigned short *y, long rows, long n) {
    for (long r = 0; r < rows; r++) {
        const float *h = x + r * 2 * n, *g = h + n;
        unsigned short *o = y + r * n;
        long i = 0;
        for (; i + 8 <= n; i += 8) STORE_BF16(o + i, ROUND_BF16(ROUND_BF16(LOAD(h + i)) * ACT_FORWARD(CK_GELU_ERF, ROUND_BF16(LOAD(g + i)))));
        if (i < n) {
            unsigned short part[8];
            STORE_BF16(part, ROUND_BF16(ROUND_BF16(LOAD_PART(h + i, n - i, 0.0f)) * ACT_FORWARD(CK_GELU_ERF, ROUND_BF16(LOAD_PART(g + i, n - i, 0.0f)))));
            memcpy(o + i, part, (size_t)(n - i) * sizeof part[0]);
        }
    }
}

// dx rows = [dy * gelu(gate) | dy * hidden * gelu'(gate)].
CLONES void FN(ck_geglu_backward)(const float *x, const float *dy, float *dx, long rows, long n) {
    for (long r = 0; r < rows; r++) {
        const float *h = x + r * 2 * n, *g = h + n, *d = dy + r * n;
        float *dh = dx + r * 2 * n, *dg = dh + n;
        long i = 0;
        for (; i + 8 <= n; i += 8) {
            v8f gv = LOAD(g + i), dv = LOAD(d + i);
            STORE(dh + i, dv * ACT_FORWARD(CK_GELU_ERF, gv));
            STORE(dg + i, dv * LOAD(h + i) * ACT_DERIVATIVE(CK_GELU_ERF, gv));
        }
        if (i < n) {
            long k = n - i;
            v8f gv = LOAD_PART(g + i, k, 0.0f), dv = LOAD_PART(d + i, k, 0.0f);
            STORE_PART(dh + i, dv * ACT_FORWARD(CK_GELU_ERF, gv), k);
            STORE_PART(dg + i, dv * LOAD_PART(h + i, k, 0.0f) * ACT_DERIVATIVE(CK_GELU_ERF, gv), k);
        }
    }
}

// float32 -> bfloat16, round to nearest even (NaN kept NaN, quiet), as torch's c10::BFloat16 and DType.swift's bf16Bits.
CLONES void FN(ck_to_bf16)(const float *x, unsigned short *y, long n) {
    for (long i = 0; i < n; i++) {
        unsigned u;
        memcpy(&u, x + i, sizeof u);
        const int nan = (u & 0x7fffffffu) > 0x7f800000u;
        y[i] = (unsigned short)(nan ? (u >> 16) | 0x40 : (u + 0x7fffu + ((u >> 16) & 1)) >> 16);
    }
}

// x[i] rounded to bfloat16 in place (nearest even, NaN kept NaN), as float32: ck_to_bf16 followed by the widening.
CLONES void FN(ck_round_bf16)(float *x, long n) {
    for (long i = 0; i < n; i++) {
        unsigned u;
        memcpy(&u, x + i, sizeof u);
        const int nan = (u & 0x7fffffffu) > 0x7f800000u;
        u = nan ? (u | 0x400000u) & 0xffff0000u : (u + 0x7fffu + ((u >> 16) & 1)) & 0xffff0000u;
        memcpy(x + i, &u, sizeof u);
    }
}
