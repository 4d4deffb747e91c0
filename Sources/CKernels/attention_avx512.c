// Fused float32 attention forward for AVX-512 (the x86-64-v4 level of ck_attention_forward, attention_body.h):
// FlashAttention-2 (Dao 2023) with the online softmax of Milakov & Gimelshein (2018), in 512-bit vectors.
//
// As in attention_body.h the vector lanes run over query rows: a group of AZ_R = 32 rows is two 16-float vectors, the
// scores of one key for the group are two vectors (a row of S^T), the running max / sum and the rescaling are
// lane-wise, and the output is accumulated transposed (O^T). What differs from the 8-lane body:
// - 512-bit vectors: half the instructions per FMA (Zen 4 runs one 512-bit or two 256-bit FMAs a cycle, so the 8-lane
//   body spent its issue slots on broadcasts and loads);
// - the scores are in base 2: q is scaled by scale * log2(e) while it is transposed, so P = 2^(S - m) is a
//   round-to-integer, a subtraction, a degree-5 polynomial and one vscalefps (no Cody-Waite reduction, no clamp at
//   the top: S - m <= 0); the log-sum-exp is converted back to base e at the end;
// - the rescaling of O^T is skipped when the running max did not change in any lane of a vector (most key blocks
//   after the first few).
// Per key block (AZ_BK keys) the keys are packed AZ_JB at a time with the head dimension outer and the values with dv
// padded to a multiple of AZ_CB (zeros); both are shared by every row group of the task.
#include "ckernels.h"
#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>

#define T512 __attribute__((target("arch=x86-64-v4"), min_vector_width(512)))
#define AZ_R 32  // query rows per group: two 16-float vectors
#define AZ_JB 12 // keys per score micro-kernel: 24 accumulators of the 32 vector registers
#define AZ_CB 8  // head columns per value micro-kernel: 16 accumulators
#ifndef AZ_BK
#define AZ_BK 96 // keys per block (a multiple of AZ_JB; 96-144 ran fastest for head dims 40 and 80 on a Zen 4)
#endif

/// 2^t for t <= 0 (below -151, or -inf: exactly 0): t = n + f with n an integer and |f| <= 1/2, 2^f by a degree-5 polynomial
/// (relative error below 3e-7 in float32), times 2^n by vscalefps (exact, 0 below the subnormals).
static inline __attribute__((always_inline)) T512 __m512 az_exp2(__m512 t) {
    t = _mm512_max_ps(t, _mm512_set1_ps(-151.0f));
    const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 f = _mm512_sub_ps(t, n);
    __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(1.3276472e-3f), f, _mm512_set1_ps(9.6755419e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5507131e-2f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022120e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314694e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0000001f));
    return _mm512_scalef_ps(p, n);
}

/// S^T of AZ_JB packed keys (kp: d x AZ_JB floats) for the row group (qt: d x 32 floats, scaled), stored to st
/// (AZ_JB x 32); the lane-wise max is folded into mx0 / mx1.
static inline __attribute__((always_inline)) T512 void az_scores(const float *qt, const float *kp, long d, float *st,
                                                                 __m512 *mx0, __m512 *mx1) {
    __m512 a0[AZ_JB], a1[AZ_JB];
#pragma clang loop unroll(full)
    for (int t = 0; t < AZ_JB; t++) { a0[t] = _mm512_setzero_ps(); a1[t] = _mm512_setzero_ps(); }
    for (long c = 0; c < d; c++) {
        const __m512 q0 = _mm512_load_ps(qt + c * AZ_R), q1 = _mm512_load_ps(qt + c * AZ_R + 16);
        const float *kc = kp + c * AZ_JB;
#pragma clang loop unroll(full)
        for (int t = 0; t < AZ_JB; t++) {
            const __m512 kb = _mm512_set1_ps(kc[t]);
            a0[t] = _mm512_fmadd_ps(q0, kb, a0[t]);
            a1[t] = _mm512_fmadd_ps(q1, kb, a1[t]);
        }
    }
    __m512 m0 = *mx0, m1 = *mx1;
#pragma clang loop unroll(full)
    for (int t = 0; t < AZ_JB; t++) {
        _mm512_store_ps(st + t * AZ_R, a0[t]);
        _mm512_store_ps(st + t * AZ_R + 16, a1[t]);
        m0 = _mm512_max_ps(m0, a0[t]);
        m1 = _mm512_max_ps(m1, a1[t]);
    }
    *mx0 = m0;
    *mx1 = m1;
}

/// O^T[c0 .. c0 + AZ_CB) += sum_j P^T[j] vp[j, c], j < n (vp rows dvp floats apart).
static inline __attribute__((always_inline)) T512 void az_values(const float *pt, const float *vp, long dvp, long n,
                                                                 float *ot) {
    __m512 a0[AZ_CB], a1[AZ_CB];
#pragma clang loop unroll(full)
    for (int t = 0; t < AZ_CB; t++) { a0[t] = _mm512_load_ps(ot + t * AZ_R); a1[t] = _mm512_load_ps(ot + t * AZ_R + 16); }
    for (long j = 0; j < n; j++) {
        const __m512 p0 = _mm512_load_ps(pt + j * AZ_R), p1 = _mm512_load_ps(pt + j * AZ_R + 16);
        const float *vj = vp + j * dvp;
#pragma clang loop unroll(full)
        for (int t = 0; t < AZ_CB; t++) {
            const __m512 vb = _mm512_set1_ps(vj[t]);
            a0[t] = _mm512_fmadd_ps(p0, vb, a0[t]);
            a1[t] = _mm512_fmadd_ps(p1, vb, a1[t]);
        }
    }
#pragma clang loop unroll(full)
    for (int t = 0; t < AZ_CB; t++) { _mm512_store_ps(ot + t * AZ_R, a0[t]); _mm512_store_ps(ot + t * AZ_R + 16, a1[t]); }
}

long ck_attention_avx512_work_floats(long rows, long d, long dv) {
    const long groups = (rows + AZ_R - 1) / AZ_R, dvp = (dv + AZ_CB - 1) / AZ_CB * AZ_CB;
    return groups * AZ_R * (d + dvp + 2) + AZ_BK * (AZ_R + d + dvp) + 16; // + 16: alignment to 64 bytes
}

T512 void ck_attention_forward_avx512(const float *q, long qs, const float *k, long ks, const float *v, long vs,
                                      float *o, long os, long rows, long lk, long d, long dv, float scale, int causal,
                                      long limit0, float *lse, float *work) {
    const long groups = (rows + AZ_R - 1) / AZ_R, dvp = (dv + AZ_CB - 1) / AZ_CB * AZ_CB;
    float *qt = (float *)(((uintptr_t)work + 63) & ~(uintptr_t)63); // groups x d x 32: q scale log2(e), transposed
    float *ot = qt + groups * d * AZ_R;                              // groups x dvp x 32: the output, transposed
    float *ml = ot + groups * dvp * AZ_R;                            // groups x 2 x 32: running max (base 2) and sum
    float *st = ml + groups * 2 * AZ_R;                              // AZ_BK x 32: scores, then probabilities
    float *kp = st + AZ_BK * AZ_R;                                   // AZ_BK x d: packed keys
    float *vp = kp + AZ_BK * d;                                      // AZ_BK x dvp: packed values
    const float qscale = scale * 1.4426950408889634f;
    memset(qt, 0, (size_t)(groups * d * AZ_R) * sizeof(float));
    for (long r = 0; r < rows; r++) {
        const float *qr = q + r * qs;
        float *g = qt + (r / AZ_R) * d * AZ_R + r % AZ_R;
        for (long c = 0; c < d; c++) g[c * AZ_R] = qscale * qr[c];
    }
    memset(ot, 0, (size_t)(groups * dvp * AZ_R) * sizeof(float));
    for (long g = 0; g < groups; g++) {
        for (int i = 0; i < AZ_R; i++) { ml[g * 2 * AZ_R + i] = -INFINITY; ml[g * 2 * AZ_R + AZ_R + i] = 0.0f; }
    }
    const __m512 ninf = _mm512_set1_ps(-INFINITY);
    // Causal: row r sees keys j <= limit0 + r; keys past the last row's limit are never needed.
    const long kend = causal ? (limit0 + rows < lk ? (limit0 + rows < 0 ? 0 : limit0 + rows) : lk) : lk;
    for (long j0 = 0; j0 < kend; j0 += AZ_BK) {
        const long n = kend - j0 < AZ_BK ? kend - j0 : AZ_BK, chunks = (n + AZ_JB - 1) / AZ_JB;
        // Keys in chunks of AZ_JB (d x AZ_JB each); the last chunk's missing keys repeat its last key (same max).
        for (long ch = 0; ch < chunks; ch++) {
            float *dst = kp + ch * AZ_JB * d;
            for (int t = 0; t < AZ_JB; t++) {
                const long j = ch * AZ_JB + t < n ? ch * AZ_JB + t : n - 1;
                const float *kr = k + (j0 + j) * ks;
                for (long c = 0; c < d; c++) dst[c * AZ_JB + t] = kr[c];
            }
        }
        for (long j = 0; j < n; j++) {
            memcpy(vp + j * dvp, v + (j0 + j) * vs, (size_t)dv * sizeof(float));
            if (dvp > dv) memset(vp + j * dvp + dv, 0, (size_t)(dvp - dv) * sizeof(float));
        }
        for (long g = 0; g < groups; g++) {
            const float *qg = qt + g * d * AZ_R;
            float *og = ot + g * dvp * AZ_R, *mg = ml + g * 2 * AZ_R, *lg = mg + AZ_R;
            __m512 mx0 = ninf, mx1 = ninf;
            for (long ch = 0; ch < chunks; ch++) az_scores(qg, kp + ch * AZ_JB * d, d, st + ch * AZ_JB * AZ_R, &mx0, &mx1);
            const long rowlim = limit0 + g * AZ_R; // key limit of the group's first row
            if (causal && j0 + n - 1 > rowlim) {
                // Mask keys j0 + j > rowlim + lane (lanes below j0 + j - rowlim), then recompute the max.
                const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
                mx0 = ninf;
                mx1 = ninf;
                for (long j = 0; j < n; j++) {
                    const long off = j0 + j - rowlim;
                    const __m512i offv = _mm512_set1_epi32((int)(off < 0 ? 0 : off > 64 ? 64 : off));
                    const __mmask16 k0 = _mm512_cmplt_epi32_mask(lane, offv);
                    const __mmask16 k1 = _mm512_cmplt_epi32_mask(_mm512_add_epi32(lane, _mm512_set1_epi32(16)), offv);
                    const __m512 s0 = _mm512_mask_mov_ps(_mm512_load_ps(st + j * AZ_R), k0, ninf);
                    const __m512 s1 = _mm512_mask_mov_ps(_mm512_load_ps(st + j * AZ_R + 16), k1, ninf);
                    _mm512_store_ps(st + j * AZ_R, s0);
                    _mm512_store_ps(st + j * AZ_R + 16, s1);
                    mx0 = _mm512_max_ps(mx0, s0);
                    mx1 = _mm512_max_ps(mx1, s1);
                }
            }
            const __m512 m0 = _mm512_load_ps(mg), m1 = _mm512_load_ps(mg + 16);
            const __m512 n0 = _mm512_max_ps(m0, mx0), n1 = _mm512_max_ps(m1, mx1);
            // Lanes that have seen no key yet keep -inf as their max and shift by 0 (their scores are all -inf).
            const __m512 sh0 = _mm512_mask_mov_ps(n0, _mm512_cmp_ps_mask(n0, ninf, _CMP_EQ_OQ), _mm512_setzero_ps());
            const __m512 sh1 = _mm512_mask_mov_ps(n1, _mm512_cmp_ps_mask(n1, ninf, _CMP_EQ_OQ), _mm512_setzero_ps());
            const __m512 c0 = az_exp2(_mm512_sub_ps(m0, sh0)), c1 = az_exp2(_mm512_sub_ps(m1, sh1));
            __m512 l0 = _mm512_mul_ps(_mm512_load_ps(lg), c0), l1 = _mm512_mul_ps(_mm512_load_ps(lg + 16), c1);
            for (long j = 0; j < n; j++) {
                const __m512 s0 = _mm512_load_ps(st + j * AZ_R), s1 = _mm512_load_ps(st + j * AZ_R + 16);
                const __m512 p0 = az_exp2(_mm512_sub_ps(s0, sh0)), p1 = az_exp2(_mm512_sub_ps(s1, sh1));
                _mm512_store_ps(st + j * AZ_R, p0);
                _mm512_store_ps(st + j * AZ_R + 16, p1);
                l0 = _mm512_add_ps(l0, p0);
                l1 = _mm512_add_ps(l1, p1);
            }
            _mm512_store_ps(mg, n0);
            _mm512_store_ps(mg + 16, n1);
            _mm512_store_ps(lg, l0);
            _mm512_store_ps(lg + 16, l1);
            const __m512 one = _mm512_set1_ps(1.0f);
            if (_mm512_cmp_ps_mask(c0, one, _CMP_NEQ_UQ) | _mm512_cmp_ps_mask(c1, one, _CMP_NEQ_UQ)) {
                for (long c = 0; c < dvp; c++) {
                    _mm512_store_ps(og + c * AZ_R, _mm512_mul_ps(_mm512_load_ps(og + c * AZ_R), c0));
                    _mm512_store_ps(og + c * AZ_R + 16, _mm512_mul_ps(_mm512_load_ps(og + c * AZ_R + 16), c1));
                }
            }
            for (long c = 0; c < dvp; c += AZ_CB) az_values(st, vp + c, dvp, n, og + c * AZ_R);
        }
    }
    for (long r = 0; r < rows; r++) {
        const long g = r / AZ_R, i = r % AZ_R;
        const float m = ml[g * 2 * AZ_R + i], l = ml[g * 2 * AZ_R + AZ_R + i], inv = l > 0 ? 1.0f / l : 0.0f;
        const float *src = ot + g * dvp * AZ_R + i;
        float *dst = o + r * os;
        for (long c = 0; c < dv; c++) dst[c] = src[c * AZ_R] * inv;
        if (lse) lse[r] = m * 0.6931471805599453f + logf(l);
    }
}
#endif
