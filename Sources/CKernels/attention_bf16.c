// Fused attention forward with both products in native bf16 (vdpbf16ps), for inference under bf16 autocast on CPUs
// with AVX512_BF16: the structure of attention_body.h (16 query rows per group in the lanes of one 16-float vector,
// online softmax lane-wise in float32, output accumulated transposed), with
//   S^T[j] = scale * sum_c bf16(q[., c]) bf16(k[j, c])   (float32 accumulation; vdpbf16ps takes the head dimension
//                                                          two at a time: q packed as (d/2, 16 rows, 2))
//   P^T[j] = bf16(exp(S^T[j] - m))                        (rounded to nearest even, as torch's flash attention converts
//                                                          its float32 probabilities before P V)
//   O^T[c] = O^T[c] corr + sum_j P^T[j] bf16(v[j, c])     (keys two at a time: P packed as (n/2, 16 rows, 2), v as
//                                                          (n/2, dv, 2))
// Compiled once, for x86-64-v4 + AVX512_BF16; called only where the CPU has it (ck_attention_forward_bf16 is a no-op
// returning 0 otherwise, and on other architectures).
#include "ckernels.h"
#include <math.h>
#include <string.h>

#define AB_R 16
#define AB_BK 256 // keys per block: P is rounded to bf16 against the running max of its block
#define AB_JB 16 // keys per scores micro-kernel: 16 accumulators
#define AB_CB 8  // head columns per values micro-kernel

long ck_attention_bf16_work_bytes(long rows, long d, long dv) {
    const long groups = (rows + AB_R - 1) / AB_R, dp = (d + 1) / 2, dvp = (dv + AB_CB - 1) / AB_CB * AB_CB;
    return 4 * (groups * AB_R * dp + groups * AB_R * dvp + groups * 2 * AB_R + (AB_BK + AB_JB) * AB_R + AB_BK / 2 * AB_R) + 64;
}

long ck_attention_bf16_packed_words(long lk, long d, long dv) {
    const long dp = (d + 1) / 2, dvp = (dv + AB_CB - 1) / AB_CB * AB_CB;
    return (lk + AB_JB - 1) / AB_JB * AB_JB * dp + (lk + 1) / 2 * dvp;
}

#if defined(__x86_64__)
#include <immintrin.h>

#define AB_TARGET __attribute__((target("arch=x86-64-v4,avx512bf16"), min_vector_width(512)))

/// Two bf16 values (nearest even; inputs are finite) as one 32-bit word, `lo` in the low half.
static inline unsigned bf16_pair(float lo, float hi) {
    unsigned a, b;
    memcpy(&a, &lo, 4);
    memcpy(&b, &hi, 4);
    a = (a + 0x7fffu + ((a >> 16) & 1)) >> 16;
    b = (b + 0x7fffu + ((b >> 16) & 1)) & 0xffff0000u;
    return a | b;
}

// exp as kernels_body.h's VEXP compiles at its AVX-512 level (same constants, the same operations fused into FMAs
// as Clang contracts them there, the power of two by vscalefps), 16 lanes.
static inline AB_TARGET __m512 ab_exp(__m512 x) {
    x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.72283f)), _mm512_set1_ps(-87.33654f));
    const __m512 t = _mm512_fmadd_ps(x, _mm512_set1_ps(1.442695041f), _mm512_set1_ps(12582912.0f));
    const __m512 n = _mm512_sub_ps(t, _mm512_set1_ps(12582912.0f));
    const __m512 r = _mm512_fmadd_ps(n, _mm512_set1_ps(2.12194440e-4f), _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x));
    __m512 p = _mm512_fmadd_ps(r, _mm512_set1_ps(1.9875691500e-4f), _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    const __m512 y = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(y, n);
}

/// One head's keys and values packed for ab_forward (ck_attention_bf16_pack).
static void ab_pack(const float *k, long ks, const float *v, long vs, long lk, long d, long dv, unsigned *packed) {
    const long dp = (d + 1) / 2, dvp = (dv + AB_CB - 1) / AB_CB * AB_CB, chunks = (lk + AB_JB - 1) / AB_JB;
    // Keys in chunks of AB_JB (dp x AB_JB words each); the last chunk's missing keys repeat the last key (same max).
    for (long ch = 0; ch < chunks; ch++) {
        unsigned *dst = packed + ch * AB_JB * dp;
        for (int t = 0; t < AB_JB; t++) {
            const long j = ch * AB_JB + t < lk ? ch * AB_JB + t : lk - 1;
            const float *kr = k + j * ks;
            for (long c2 = 0; c2 < dp; c2++) dst[c2 * AB_JB + t] = bf16_pair(kr[2 * c2], 2 * c2 + 1 < d ? kr[2 * c2 + 1] : 0.0f);
        }
    }
    // Values as key pairs (dvp words per pair), zeros past dv and for the missing key of an odd count.
    unsigned *vp = packed + chunks * AB_JB * dp;
    for (long j2 = 0; j2 < (lk + 1) / 2; j2++) {
        const float *v0 = v + 2 * j2 * vs, *v1 = 2 * j2 + 1 < lk ? v0 + vs : NULL;
        for (long c = 0; c < dvp; c++) vp[j2 * dvp + c] = c < dv ? bf16_pair(v0[c], v1 ? v1[c] : 0.0f) : 0u;
    }
}

static AB_TARGET void ab_forward(const float *q, long qs, const unsigned *packed, float *o, long os, long rows, long lk,
                                 long d, long dv, float scale, float *lse, void *work) {
    const long groups = (rows + AB_R - 1) / AB_R, dp = (d + 1) / 2, dvp = (dv + AB_CB - 1) / AB_CB * AB_CB;
    unsigned *qt = (unsigned *)(((unsigned long)work + 63) & ~63ul); // groups x dp x 16 words (row pairs of q)
    float *ot = (float *)(qt + groups * AB_R * dp);                  // groups x dvp x 16
    float *ml = ot + groups * AB_R * dvp;                            // groups x 2 x 16
    float *st = ml + groups * 2 * AB_R;                              // (AB_BK + AB_JB) x 16 scores
    unsigned *pt = (unsigned *)(st + (AB_BK + AB_JB) * AB_R);        // AB_BK / 2 x 16 words
    const unsigned *kpacked = packed, *vpacked = packed + (lk + AB_JB - 1) / AB_JB * AB_JB * dp;
    for (long g = 0; g < groups; g++) {
        for (long c2 = 0; c2 < dp; c2++) {
            for (int i = 0; i < AB_R; i++) {
                const long r = g * AB_R + i;
                const float lo = r < rows ? q[r * qs + 2 * c2] : 0.0f;
                const float hi = r < rows && 2 * c2 + 1 < d ? q[r * qs + 2 * c2 + 1] : 0.0f;
                qt[(g * dp + c2) * AB_R + i] = bf16_pair(lo, hi);
            }
        }
    }
    memset(ot, 0, (size_t)(groups * AB_R * dvp) * sizeof(float));
    for (long g = 0; g < groups; g++) {
        for (int i = 0; i < AB_R; i++) { ml[g * 2 * AB_R + i] = -INFINITY; ml[g * 2 * AB_R + AB_R + i] = 0.0f; }
    }
    const __m512 vscale = _mm512_set1_ps(scale);
    const __m512i interleave = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8,
                                                23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    for (long j0 = 0; j0 < lk; j0 += AB_BK) {
        const long n = lk - j0 < AB_BK ? lk - j0 : AB_BK, chunks = (n + AB_JB - 1) / AB_JB, pairs = (n + 1) / 2;
        const unsigned *kp = kpacked + j0 * dp, *vp = vpacked + j0 / 2 * dvp; // j0: a multiple of AB_JB and of 2
        for (long g = 0; g < groups; g++) {
            const unsigned *qg = qt + g * dp * AB_R;
            float *og = ot + g * dvp * AB_R, *mg = ml + g * 2 * AB_R, *lg = mg + AB_R;
            __m512 mx = _mm512_set1_ps(-INFINITY);
            for (long ch = 0; ch < chunks; ch++) {
                __m512 acc[AB_JB];
#pragma clang loop unroll(full)
                for (int t = 0; t < AB_JB; t++) acc[t] = _mm512_setzero_ps();
                const unsigned *kc = kp + ch * AB_JB * dp;
                for (long c2 = 0; c2 < dp; c2++) {
                    const __m512bh a = (__m512bh)_mm512_load_si512(qg + c2 * AB_R);
#pragma clang loop unroll(full)
                    for (int t = 0; t < AB_JB; t++) {
                        acc[t] = _mm512_dpbf16_ps(acc[t], a, (__m512bh)_mm512_set1_epi32((int)kc[c2 * AB_JB + t]));
                    }
                }
#pragma clang loop unroll(full)
                for (int t = 0; t < AB_JB; t++) {
                    const __m512 s = _mm512_mul_ps(acc[t], vscale);
                    _mm512_storeu_ps(st + (ch * AB_JB + t) * AB_R, s);
                    mx = _mm512_max_ps(mx, s);
                }
            }
            const __m512 m0 = _mm512_loadu_ps(mg), mn = _mm512_max_ps(m0, mx);
            const __m512 c0 = ab_exp(_mm512_sub_ps(m0, mn)); // m0 = -inf (first block): exp(-87.3) * l = 0, * O = 0
            __m512 l = _mm512_mul_ps(_mm512_loadu_ps(lg), c0);
            for (long j2 = 0; j2 < pairs; j2++) {
                const __m512 p0 = ab_exp(_mm512_sub_ps(_mm512_loadu_ps(st + 2 * j2 * AB_R), mn));
                __m512 p1 = _mm512_setzero_ps();
                if (2 * j2 + 1 < n) p1 = ab_exp(_mm512_sub_ps(_mm512_loadu_ps(st + (2 * j2 + 1) * AB_R), mn));
                l = _mm512_add_ps(l, _mm512_add_ps(p0, p1));
                const __m512i halves = (__m512i)_mm512_cvtne2ps_pbh(p1, p0); // [p0 | p1] as bf16
                _mm512_store_si512(pt + j2 * AB_R, _mm512_permutexvar_epi16(interleave, halves));
            }
            _mm512_storeu_ps(mg, mn);
            _mm512_storeu_ps(lg, l);
            for (long c = 0; c < dvp; c++) _mm512_storeu_ps(og + c * AB_R, _mm512_mul_ps(_mm512_loadu_ps(og + c * AB_R), c0));
            for (long cb = 0; cb < dvp; cb += AB_CB) {
                __m512 acc[AB_CB];
#pragma clang loop unroll(full)
                for (int t = 0; t < AB_CB; t++) acc[t] = _mm512_loadu_ps(og + (cb + t) * AB_R);
                for (long j2 = 0; j2 < pairs; j2++) {
                    const __m512bh a = (__m512bh)_mm512_load_si512(pt + j2 * AB_R);
                    const unsigned *vj = vp + j2 * dvp + cb;
#pragma clang loop unroll(full)
                    for (int t = 0; t < AB_CB; t++) acc[t] = _mm512_dpbf16_ps(acc[t], a, (__m512bh)_mm512_set1_epi32((int)vj[t]));
                }
#pragma clang loop unroll(full)
                for (int t = 0; t < AB_CB; t++) _mm512_storeu_ps(og + (cb + t) * AB_R, acc[t]);
            }
        }
    }
    for (long r = 0; r < rows; r++) {
        const long g = r / AB_R, i = r % AB_R;
        const float m = ml[g * 2 * AB_R + i], l = ml[g * 2 * AB_R + AB_R + i], inv = l > 0 ? 1.0f / l : 0.0f;
        const float *src = ot + g * dvp * AB_R + i;
        float *dst = o + r * os;
        for (long c = 0; c < dv; c++) dst[c] = src[c * AB_R] * inv;
        if (lse) lse[r] = m + logf(l);
    }
}

void ck_attention_bf16_pack(const float *k, long ks, const float *v, long vs, long lk, long d, long dv, unsigned *packed) {
    ab_pack(k, ks, v, vs, lk, d, dv, packed);
}

int ck_attention_forward_bf16(const float *q, long qs, const unsigned *packed, float *o, long os, long rows, long lk,
                              long d, long dv, float scale, float *lse, void *work) {
    if (ck_isa_active() < CK_ISA_AVX512_BF16 || lk < 1) return 0;
    ab_forward(q, qs, packed, o, os, rows, lk, d, dv, scale, lse, work);
    return 1;
}
#else
void ck_attention_bf16_pack(const float *k, long ks, const float *v, long vs, long lk, long d, long dv, unsigned *packed) {
    (void)k; (void)ks; (void)v; (void)vs; (void)lk; (void)d; (void)dv; (void)packed;
}

int ck_attention_forward_bf16(const float *q, long qs, const unsigned *packed, float *o, long os, long rows, long lk,
                              long d, long dv, float scale, float *lse, void *work) {
    (void)q; (void)qs; (void)packed; (void)o; (void)os; (void)rows; (void)lk; (void)d; (void)dv; (void)scale; (void)lse;
    (void)work;
    return 0;
}
#endif
