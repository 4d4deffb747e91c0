// Fused float32 attention forward for one block of query rows (FlashAttention-2, Dao 2023, with the online softmax
// of Milakov & Gimelshein 2018), compiled per ISA level by isa_dispatch.c like kernels_body.h (whose VEXP it uses).
//
// The vector lanes run over query rows, not over keys or the head dimension: a group of AT_R = 16 query rows is two
// 8-lane vectors, so the scores of one key for the group are two vectors (S^T row), the running max, sum and the
// rescaling are plain lane-wise operations (no horizontal reductions), the head dimension may be anything (SD's 40
// does not fill 16-float vectors), and the output is accumulated transposed (O^T: dv rows of 16 lanes).
//   S^T[j] = sum_c (scale q[., c]) k[j, c]        micro-kernel: AT_JB keys x 2 vectors of accumulators
//   P^T[j] = exp(S^T[j] - m), l = l corr + sum_j P^T[j]
//   O^T[c] = O^T[c] corr + sum_j P^T[j] v[j, c]   micro-kernel: AT_CB head columns x 2 vectors
// Per key block (AT_BK keys) the keys are packed AT_JB at a time with the head dimension outer (one pointer, constant
// offsets for the broadcasts) and the values with dv padded to a multiple of AT_CB (zeros); both are shared by every
// row group of the block. Each element is computed in the same order at every level (only FMA contraction differs).
#include "ckernels.h"
#include <math.h>
#include <string.h>

#include "simd.h"
#include "attention_avx512.h"

#undef AT_JB
#undef AT_CB
#if CK_LEVEL >= 2
#define AT_JB 12 // 24 accumulators of the 32 vector registers
#define AT_CB 8
#else
#define AT_JB 6 // 12 accumulators of the 16
#define AT_CB 6
#endif

#ifndef AT_R
#define AT_R 16
#define AT_BK 96 // a multiple of every level's AT_JB
#define AT_WORK_LIMIT_JB 12 // the largest AT_JB of any level (work buffer sizes)
#define AT_WORK_LIMIT_CB 8
#endif

/// S^T of AT_JB packed keys (kp: d x AT_JB floats) for the row group (qt: d x 16 floats, scaled), stored to st
/// (AT_JB x 16); masked lanes (causal) set to -inf; returns the lane-wise max through mx.
static inline __attribute__((always_inline)) CK_TARGET void FN(at_scores)(const float *qt, const float *kp, long d,
                                                                          float *st, v8f *mx0, v8f *mx1) {
    v8f a0[AT_JB], a1[AT_JB];
#pragma clang loop unroll(full)
    for (int t = 0; t < AT_JB; t++) { a0[t] = SPLAT(0.0f); a1[t] = SPLAT(0.0f); }
    for (long c = 0; c < d; c++) {
        const v8f q0 = LOAD(qt + c * AT_R), q1 = LOAD(qt + c * AT_R + 8);
        const float *kc = kp + c * AT_JB;
#pragma clang loop unroll(full)
        for (int t = 0; t < AT_JB; t++) {
            const v8f kb = SPLAT(kc[t]);
            a0[t] += q0 * kb;
            a1[t] += q1 * kb;
        }
    }
    v8f m0 = *mx0, m1 = *mx1;
#pragma clang loop unroll(full)
    for (int t = 0; t < AT_JB; t++) {
        STORE(st + t * AT_R, a0[t]);
        STORE(st + t * AT_R + 8, a1[t]);
        m0 = VMAX(m0, a0[t]);
        m1 = VMAX(m1, a1[t]);
    }
    *mx0 = m0;
    *mx1 = m1;
}

/// O^T[c0 .. c0 + AT_CB) += sum_j P^T[j] vp[j, c], j < n (vp rows dvp floats apart).
static inline __attribute__((always_inline)) CK_TARGET void FN(at_values)(const float *pt, const float *vp, long dvp, long n,
                                                                          float *ot) {
    v8f a0[AT_CB], a1[AT_CB];
#pragma clang loop unroll(full)
    for (int t = 0; t < AT_CB; t++) { a0[t] = LOAD(ot + t * AT_R); a1[t] = LOAD(ot + t * AT_R + 8); }
    for (long j = 0; j < n; j++) {
        const v8f p0 = LOAD(pt + j * AT_R), p1 = LOAD(pt + j * AT_R + 8);
        const float *vj = vp + j * dvp;
#pragma clang loop unroll(full)
        for (int t = 0; t < AT_CB; t++) {
            const v8f vb = SPLAT(vj[t]);
            a0[t] += p0 * vb;
            a1[t] += p1 * vb;
        }
    }
#pragma clang loop unroll(full)
    for (int t = 0; t < AT_CB; t++) { STORE(ot + t * AT_R, a0[t]); STORE(ot + t * AT_R + 8, a1[t]); }
}

CLONES void FN(ck_attention_forward)(const float *q, long qs, const float *k, long ks, const float *v, long vs, float *o,
                                     long os, long rows, long lk, long d, long dv, float scale, int causal, long limit0,
                                     float *lse, float *work) {
#if CK_LEVEL >= 2
    ck_attention_forward_avx512(q, qs, k, ks, v, vs, o, os, rows, lk, d, dv, scale, causal, limit0, lse, work);
    return;
#endif
    const long groups = (rows + AT_R - 1) / AT_R, dvp = (dv + AT_CB - 1) / AT_CB * AT_CB;
    const long dvw = (dv + AT_WORK_LIMIT_CB - 1) / AT_WORK_LIMIT_CB * AT_WORK_LIMIT_CB + AT_WORK_LIMIT_CB; // >= dvp, any level
    float *qt = work;                                  // groups x d x 16: scale * q, transposed, zero rows padded
    float *ot = qt + groups * d * AT_R;                // groups x dvw x 16: the output, transposed
    float *ml = ot + groups * dvw * AT_R;              // groups x 2 x 16: running max and sum
    float *st = ml + groups * 2 * AT_R;                // (AT_BK + AT_WORK_LIMIT_JB) x 16: scores, then probabilities
    float *kp = st + (AT_BK + AT_WORK_LIMIT_JB) * AT_R; // (AT_BK + AT_WORK_LIMIT_JB) x d: packed keys
    float *vp = kp + (AT_BK + AT_WORK_LIMIT_JB) * d;   // AT_BK x dvw: packed values
    memset(qt, 0, (size_t)(groups * d * AT_R) * sizeof(float));
    for (long r = 0; r < rows; r++) {
        const float *qr = q + r * qs;
        float *g = qt + (r / AT_R) * d * AT_R + r % AT_R;
        for (long c = 0; c < d; c++) g[c * AT_R] = scale * qr[c];
    }
    memset(ot, 0, (size_t)(groups * dvw * AT_R) * sizeof(float));
    for (long g = 0; g < groups; g++) {
        for (int i = 0; i < AT_R; i++) { ml[g * 2 * AT_R + i] = -INFINITY; ml[g * 2 * AT_R + AT_R + i] = 0.0f; }
    }
    // Causal: row r sees keys j <= limit0 + r; keys past the last row's limit are never needed.
    const long kend = causal ? (limit0 + rows < lk ? (limit0 + rows < 0 ? 0 : limit0 + rows) : lk) : lk;
    for (long j0 = 0; j0 < kend; j0 += AT_BK) {
        const long n = kend - j0 < AT_BK ? kend - j0 : AT_BK, chunks = (n + AT_JB - 1) / AT_JB;
        // Keys in chunks of AT_JB (d x AT_JB each); the last chunk's missing keys repeat its last key (same max).
        for (long ch = 0; ch < chunks; ch++) {
            float *dst = kp + ch * AT_JB * d;
            for (int t = 0; t < AT_JB; t++) {
                const long j = ch * AT_JB + t < n ? ch * AT_JB + t : n - 1;
                const float *kr = k + (j0 + j) * ks;
                for (long c = 0; c < d; c++) dst[c * AT_JB + t] = kr[c];
            }
        }
        for (long j = 0; j < n; j++) {
            memcpy(vp + j * dvp, v + (j0 + j) * vs, (size_t)dv * sizeof(float));
            if (dvp > dv) memset(vp + j * dvp + dv, 0, (size_t)(dvp - dv) * sizeof(float));
        }
        for (long g = 0; g < groups; g++) {
            const float *qg = qt + g * d * AT_R;
            float *og = ot + g * dvw * AT_R, *mg = ml + g * 2 * AT_R, *lg = mg + AT_R;
            v8f mx0 = SPLAT(-INFINITY), mx1 = SPLAT(-INFINITY);
            for (long ch = 0; ch < chunks; ch++) FN(at_scores)(qg, kp + ch * AT_JB * d, d, st + ch * AT_JB * AT_R, &mx0, &mx1);
            const v8i lane = {0, 1, 2, 3, 4, 5, 6, 7};
            const long rowlim = limit0 + g * AT_R; // key limit of the group's first row
            if (causal && j0 + n - 1 > rowlim) {
                // Mask keys j0 + j > rowlim + lane, then recompute the max over what is left.
                mx0 = SPLAT(-INFINITY);
                mx1 = SPLAT(-INFINITY);
                for (long j = 0; j < n; j++) {
                    const int off = (int)(j0 + j - rowlim);
                    const v8i k0 = lane < off, k1 = lane + 8 < off; // masked lanes
                    v8f s0 = LOAD(st + j * AT_R), s1 = LOAD(st + j * AT_R + 8);
                    s0 = SELECT(k0, SPLAT(-INFINITY), s0);
                    s1 = SELECT(k1, SPLAT(-INFINITY), s1);
                    STORE(st + j * AT_R, s0);
                    STORE(st + j * AT_R + 8, s1);
                    mx0 = VMAX(mx0, s0);
                    mx1 = VMAX(mx1, s1);
                }
            }
            const v8f m0 = LOAD(mg), m1 = LOAD(mg + 8);
            const v8f n0 = VMAX(m0, mx0), n1 = VMAX(m1, mx1);
            const v8i inf0 = n0 == SPLAT(-INFINITY), inf1 = n1 == SPLAT(-INFINITY); // nothing seen yet
            const v8f sh0 = SELECT(inf0, SPLAT(0.0f), n0), sh1 = SELECT(inf1, SPLAT(0.0f), n1);
            const v8f c0 = SELECT(m0 == SPLAT(-INFINITY), SPLAT(0.0f), VEXP(m0 - sh0));
            const v8f c1 = SELECT(m1 == SPLAT(-INFINITY), SPLAT(0.0f), VEXP(m1 - sh1));
            v8f l0 = LOAD(lg) * c0, l1 = LOAD(lg + 8) * c1;
            for (long j = 0; j < n; j++) {
                const v8f s0 = LOAD(st + j * AT_R), s1 = LOAD(st + j * AT_R + 8);
                v8f p0 = VEXP(s0 - sh0), p1 = VEXP(s1 - sh1);
                if (causal) {
                    p0 = SELECT(s0 == SPLAT(-INFINITY), SPLAT(0.0f), p0);
                    p1 = SELECT(s1 == SPLAT(-INFINITY), SPLAT(0.0f), p1);
                }
                STORE(st + j * AT_R, p0);
                STORE(st + j * AT_R + 8, p1);
                l0 += p0;
                l1 += p1;
            }
            STORE(mg, n0);
            STORE(mg + 8, n1);
            STORE(lg, l0);
            STORE(lg + 8, l1);
            for (long c = 0; c < dvp; c++) {
                STORE(og + c * AT_R, LOAD(og + c * AT_R) * c0);
                STORE(og + c * AT_R + 8, LOAD(og + c * AT_R + 8) * c1);
            }
            for (long c = 0; c < dvp; c += AT_CB) FN(at_values)(st, vp + c, dvp, n, og + c * AT_R);
        }
    }
    for (long r = 0; r < rows; r++) {
        const long g = r / AT_R, i = r % AT_R;
        const float m = ml[g * 2 * AT_R + i], l = ml[g * 2 * AT_R + AT_R + i], inv = l > 0 ? 1.0f / l : 0.0f;
        const float *src = ot + g * dvw * AT_R + i;
        float *dst = o + r * os;
        for (long c = 0; c < dv; c++) dst[c] = src[c * AT_R] * inv;
        if (lse) lse[r] = m + logf(l);
    }
}
