// Fused attention forward with both products in native bf16 (vdpbf16ps), for inference under bf16 autocast on CPUs
// with AVX512_BF16: the structure of attention_body.h (16 query rows per group in the lanes of one 16-float vector,
// online softmax lane-wise in float32, output accumulated transposed), with
//   S^T[j] = scale * sum_c bf16(q[., c]) bf16(k[j, c])   (float32 accumulation; vdpbf16ps takes the head dimension
//                                                          two at a time: q packed as (d/2, 16 rows, 2))
//   P^T[j] = bf16(exp(S^T[j] - m))                        (rounded to nearest even, as torch's flash attention converts
//                                                          its float32 probabilities before P V)
//   O^T[c] = O^T[c] corr + sum_j P^T[j] bf16(v[j, c])     (keys two at a time: P packed as (n/2, 16 rows, 2), v as
//                                                          (n/2, dv, 2))
// with m the running maximum of S up to and including the block of AB_BK keys that j is in, and exp from a table and
// a cubic (ab_exp, within about half an ulp). On Zen 4 vdpbf16ps and FMAs share the two FMA pipes,
// while half of the exponential's operations run on the other two: each group's probabilities are computed
// interleaved with the previous group's P V (ab_values), so that they cost little beyond their FMA-pipe operations.
// Compiled once, for x86-64-v4 + AVX512_BF16; called only where the CPU has it (ck_attention_forward_bf16 is a no-op
// returning 0 otherwise, and on other architectures).
#include "ckernels.h"
#include <math.h>
#include <string.h>

#define AB_R 16
#define AB_BK 256 // keys per block: P is rounded to bf16 against the running max of its block
#define AB_JB 16 // keys per scores micro-kernel: 16 accumulators
#define AB_CB 20 // at most as many head columns per values micro-kernel (accumulators): 20 or 16, see ab_cols

/// Value columns per P V micro-kernel for dv: 20 (SD's 40, 80, 160) unless 16 pads less (64, 128).
static inline long ab_cols(long dv) { return (dv + 15) / 16 * 16 < (dv + 19) / 20 * 20 ? 16 : 20; }
/// dv padded to whole micro-kernels.
static inline long ab_dvp(long dv) { return (dv + ab_cols(dv) - 1) / ab_cols(dv) * ab_cols(dv); }

long ck_attention_bf16_work_bytes(long rows, long d, long dv) {
    const long groups = (rows + AB_R - 1) / AB_R, dp = (d + 1) / 2, dvp = ab_dvp(dv);
    // q pairs, O^T, m and l per group, one block's scores, two groups' P pairs
    return 4 * (groups * AB_R * (dp + dvp + 2) + (AB_BK + AB_JB) * AB_R + AB_BK * AB_R) + 64;
}

long ck_attention_bf16_packed_words(long lk, long d, long dv) {
    const long dp = (d + 1) / 2, dvp = ab_dvp(dv);
    return (lk + AB_JB - 1) / AB_JB * AB_JB * dp + (lk + 1) / 2 * dvp;
}

#if defined(__x86_64__)
#include <immintrin.h>

#define AB_TARGET __attribute__((target("arch=x86-64-v4,avx512bf16"), min_vector_width(512)))

/// 32 floats (x0, x1) as 16 words of bf16 pairs (nearest even, vcvtne2ps2bf16), (x0[0], x0[1]) in the first;
/// interleaved: (x0[i], x1[i]) in word i.
static inline AB_TARGET __m512i ab_bf16_pairs(__m512 x0, __m512 x1, int interleaved) {
    const __m512i halves = (__m512i)_mm512_cvtne2ps_pbh(x1, x0); // [x0 | x1] as bf16
    if (!interleaved) return halves;
    const __m512i order = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8,
                                           23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    return _mm512_permutexvar_epi16(order, halves);
}

/// The first n (0...16) lanes.
static inline AB_TARGET __mmask16 ab_lanes(long n) {
    return _cvtu32_mask16(n >= 16 ? 0xffffu : n > 0 ? (1u << n) - 1 : 0u);
}

/// Row r of a (rows, d) float matrix as bf16 pairs transposed into dst[c2 * 16 + r % 16] for pairs c2 < dp (zeros
/// past d and for rows at or past `rows`).
static inline AB_TARGET void ab_pack_row(const float *row, long d, long dp, int valid, unsigned *dst) {
    for (long c = 0; c < 2 * dp; c += 32) {
        unsigned words[16];
        const __m512 x0 = _mm512_maskz_loadu_ps(valid ? ab_lanes(d - c) : 0, row + c);
        const __m512 x1 = _mm512_maskz_loadu_ps(valid ? ab_lanes(d - c - 16) : 0, row + c + 16);
        _mm512_storeu_si512(words, ab_bf16_pairs(x0, x1, 0));
        for (long w = 0; w < 16 && c / 2 + w < dp; w++) dst[(c / 2 + w) * 16] = words[w];
    }
}

// exp(x) for x <= 0 (x < -86 gives exp(-86)), within about half an ulp: x = (k/16) ln2 + r with k = round(16 x log2 e)
// by the 1.5 * 2^19 shifter, r by Cody-Waite (|r| <= ln2/32), 2^(k/16) from a 16-entry table (the shifter's low 4
// bits index it) as the float nearest it plus the rest, with k >> 4 added to the exponent, exp(r) by a cubic. 7 of its
// operations use the FMA pipes (vdpbf16ps's), 8 the others.
static inline AB_TARGET __m512 ab_exp(__m512 x) {
    const __m512 table = _mm512_setr_ps(1.0f, 1.04427373f, 1.09050775f, 1.13878858f, 1.18920708f, 1.24185777f,
                                        1.29683959f, 1.35425556f, 1.41421354f, 1.47682619f, 1.54221082f, 1.61049032f,
                                        1.68179286f, 1.75625217f, 1.8340081f, 1.91520655f);
    const __m512 rest = _mm512_setr_ps(0.0f, 4.83347014e-08f, -1.30775402e-08f, 5.38622213e-08f, 3.79763538e-08f,
                                       4.49683815e-08f, -4.01899938e-08f, -1.0123349e-08f, 2.42032343e-08f,
                                       -4.5008987e-08f, 8.07090461e-09f, 9.83621717e-09f, -2.47553273e-08f,
                                       -9.23577037e-09f, -1.12392782e-08f, 9.84532855e-09f);
    x = _mm512_max_ps(x, _mm512_set1_ps(-86.0f));
    const __m512 shifted = _mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504f), _mm512_set1_ps(786432.0f)); // 786432 + k/16
    const __m512 n = _mm512_sub_ps(shifted, _mm512_set1_ps(786432.0f));
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145752f), x); // ln2 = 0.693145752 + 1.42860677e-6
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860677e-6f), r);
    const __m512i bits = _mm512_castps_si512(shifted); // 786432's low 19 bits are 0: k in them
    const __m512 t = _mm512_permutexvar_ps(bits, table);
    const __m512 p = _mm512_fmadd_ps(_mm512_fmadd_ps(r, _mm512_set1_ps(1.0f / 6), _mm512_set1_ps(0.5f)), r,
                                     _mm512_set1_ps(1.0f)); // (exp(r) - 1) / r
    const __m512 y = _mm512_add_ps(t, _mm512_fmadd_ps(_mm512_mul_ps(t, r), p, _mm512_permutexvar_ps(bits, rest)));
    const __m512i e = _mm512_and_si512(_mm512_slli_epi32(bits, 19), _mm512_set1_epi32((int)0xff800000u)); // k >> 4
    return _mm512_castsi512_ps(_mm512_add_epi32(_mm512_castps_si512(y), e)); // y in [0.97, 2): stays normal
}

/// One head's keys and values packed for ab_forward (ck_attention_bf16_pack).
static AB_TARGET void ab_pack(const float *k, long ks, const float *v, long vs, long lk, long d, long dv, unsigned *packed) {
    const long dp = (d + 1) / 2, dvp = ab_dvp(dv), chunks = (lk + AB_JB - 1) / AB_JB;
    // Keys in chunks of AB_JB (dp x AB_JB words each); the last chunk's missing keys repeat the last key (same max).
    for (long j = 0; j < chunks * AB_JB; j++) {
        ab_pack_row(k + (j < lk ? j : lk - 1) * ks, d, dp, 1, packed + j / AB_JB * AB_JB * dp + j % AB_JB);
    }
    // Values as key pairs (dvp words per pair), zeros past dv and for the missing key of an odd count.
    unsigned *vp = packed + chunks * AB_JB * dp;
    for (long j2 = 0; j2 < (lk + 1) / 2; j2++) {
        const int odd = 2 * j2 + 1 == lk;
        const float *v0 = v + 2 * j2 * vs, *v1 = odd ? v0 : v0 + vs;
        for (long c = 0; c < dvp; c += 16) {
            const __m512 x0 = _mm512_maskz_loadu_ps(ab_lanes(dv - c), v0 + c);
            const __m512 x1 = _mm512_maskz_loadu_ps(odd ? 0 : ab_lanes(dv - c), v1 + c);
            _mm512_mask_storeu_epi32(vp + j2 * dvp + c, ab_lanes(dvp - c), ab_bf16_pairs(x0, x1, 1));
        }
    }
}

/// P^T for keys 2 e and 2 e + 1 of a block of n (dot products `st`, S = st * vscale, running max mn) as bf16 pairs
/// into pt, their float32 sum added to l.
static inline AB_TARGET void ab_probs(const float *st, long e, long n, __m512 vscale, __m512 mn, __m512 *l,
                                      unsigned *pt) {
    const __m512 p0 = ab_exp(_mm512_sub_ps(_mm512_mul_ps(_mm512_load_ps(st + 2 * e * AB_R), vscale), mn));
    __m512 p1 = _mm512_setzero_ps();
    if (2 * e + 1 < n) p1 = ab_exp(_mm512_sub_ps(_mm512_mul_ps(_mm512_load_ps(st + (2 * e + 1) * AB_R), vscale), mn));
    *l = _mm512_add_ps(*l, _mm512_add_ps(p0, p1));
    _mm512_store_si512(pt + e * AB_R, ab_bf16_pairs(p0, p1, 1));
}

#define AB_INLINE static inline __attribute__((always_inline)) AB_TARGET

/// acc += P^T[one pair of keys] V[the pair, cw columns from vj].
AB_INLINE void ab_values_step(__m512 *acc, const unsigned *pv, const unsigned *vj, const int cw) {
    const __m512bh a = (__m512bh)_mm512_load_si512(pv);
#pragma clang loop unroll(full)
    for (int t = 0; t < cw; t++) acc[t] = _mm512_dpbf16_ps(acc[t], a, (__m512bh)_mm512_set1_epi32((int)vj[t]));
}

/// O^T = O^T c0 + P^T V for one group (pv: its P pairs, NULL: none) and, interleaved with it (vdpbf16ps keeps the FMA
/// pipes busy, the exponentials mostly use the others), the next group's probabilities (ab_probs, `pairs` pairs of keys
/// into pt, their sum added to l; st NULL: none).
AB_INLINE void ab_values(const unsigned *pv, const unsigned *vp, long pairs, long dvp, float *og, __m512 c0,
                          const float *st, long n, __m512 vscale, __m512 mn, __m512 *l, unsigned *pt, const int cw) {
    long e = 0;
    const long todo = st ? pairs : 0;
    __m512 sum = *l;
    for (long cb = 0; pv && cb < dvp; cb += cw) {
        __m512 acc[AB_CB];
#pragma clang loop unroll(full)
        for (int t = 0; t < cw; t++) acc[t] = _mm512_mul_ps(_mm512_load_ps(og + (cb + t) * AB_R), c0);
        // One pair's probabilities per two pairs' P V, in as many column blocks as that takes (two for dv = 40).
        const long fused = todo - e < pairs / 2 ? todo - e : pairs / 2;
        long j2 = 0;
        for (; j2 < 2 * fused; j2 += 2) {
            ab_values_step(acc, pv + j2 * AB_R, vp + j2 * dvp + cb, cw);
            ab_probs(st, e++, n, vscale, mn, &sum, pt);
            ab_values_step(acc, pv + (j2 + 1) * AB_R, vp + (j2 + 1) * dvp + cb, cw);
        }
        for (; j2 < pairs; j2++) ab_values_step(acc, pv + j2 * AB_R, vp + j2 * dvp + cb, cw);
#pragma clang loop unroll(full)
        for (int t = 0; t < cw; t++) _mm512_store_ps(og + (cb + t) * AB_R, acc[t]);
    }
    for (; e < todo; e++) ab_probs(st, e, n, vscale, mn, &sum, pt);
    *l = sum;
}

/// ck_attention_forward_bf16 with cw = ab_cols(dv).
AB_INLINE void ab_forward(const float *q, long qs, const unsigned *packed, float *o, long os, long rows, long lk, long d,
                          long dv, float scale, float *lse, void *work, const int cw) {
    const long groups = (rows + AB_R - 1) / AB_R, dp = (d + 1) / 2, dvp = ab_dvp(dv);
    unsigned *qt = (unsigned *)(((unsigned long)work + 63) & ~63ul); // groups x dp x 16 words (row pairs of q)
    float *ot = (float *)(qt + groups * AB_R * dp);                  // groups x dvp x 16
    float *ml = ot + groups * AB_R * dvp;                            // groups x 2 x 16
    float *st = ml + groups * 2 * AB_R;                              // (AB_BK + AB_JB) x 16 scores
    unsigned *pt = (unsigned *)(st + (AB_BK + AB_JB) * AB_R);        // 2 x AB_BK / 2 x 16 words (two groups' P)
    const unsigned *kpacked = packed, *vpacked = packed + (lk + AB_JB - 1) / AB_JB * AB_JB * dp;
    for (long r = 0; r < groups * AB_R; r++) {
        ab_pack_row(q + r * qs, d, dp, r < rows, qt + r / AB_R * dp * AB_R + r % AB_R);
    }
    memset(ot, 0, (size_t)(groups * AB_R * dvp) * sizeof(float));
    for (long g = 0; g < groups; g++) {
        for (int i = 0; i < AB_R; i++) { ml[g * 2 * AB_R + i] = -INFINITY; ml[g * 2 * AB_R + AB_R + i] = 0.0f; }
    }
    const __m512 vscale = _mm512_set1_ps(scale);
    for (long j0 = 0; j0 < lk; j0 += AB_BK) {
        const long n = lk - j0 < AB_BK ? lk - j0 : AB_BK, chunks = (n + AB_JB - 1) / AB_JB, pairs = (n + 1) / 2;
        const unsigned *kp = kpacked + j0 * dp, *vp = vpacked + j0 / 2 * dvp; // j0: a multiple of AB_JB and of 2
        __m512 c0 = _mm512_setzero_ps();
        // Group g's scores, then its probabilities interleaved with group g - 1's P V; the last group's P V alone.
        for (long g = 0; g <= groups; g++) {
            const __m512 c0prev = c0;
            unsigned *pprev = pt + ((g + 1) & 1) * (AB_BK / 2) * AB_R, *pcur = pt + (g & 1) * (AB_BK / 2) * AB_R;
            if (g == groups) {
                __m512 none = _mm512_setzero_ps();
                if (g) ab_values(pprev, vp, pairs, dvp, ot + (g - 1) * dvp * AB_R, c0prev, NULL, n, vscale, vscale, &none,
                                 NULL, cw);
                break;
            }
            const unsigned *qg = qt + g * dp * AB_R;
            float *mg = ml + g * 2 * AB_R, *lg = mg + AB_R;
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
                    _mm512_store_ps(st + (ch * AB_JB + t) * AB_R, acc[t]);
                    mx = _mm512_max_ps(mx, acc[t]);
                }
            }
            const __m512 m0 = _mm512_load_ps(mg), mn = _mm512_max_ps(m0, _mm512_mul_ps(mx, vscale));
            c0 = ab_exp(_mm512_sub_ps(m0, mn)); // m0 = -inf (first block): exp(-86), times l = 0 and O = 0
            __m512 l = _mm512_mul_ps(_mm512_load_ps(lg), c0);
            ab_values(g ? pprev : NULL, vp, pairs, dvp, ot + (g ? g - 1 : 0) * dvp * AB_R, c0prev, st, n, vscale,
                      mn, &l, pcur, cw);
            _mm512_store_ps(mg, mn);
            _mm512_store_ps(lg, l);
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

static AB_TARGET void ab_forward_cols(const float *q, long qs, const unsigned *packed, float *o, long os, long rows,
                                      long lk, long d, long dv, float scale, float *lse, void *work) {
    if (ab_cols(dv) == 20) ab_forward(q, qs, packed, o, os, rows, lk, d, dv, scale, lse, work, 20);
    else ab_forward(q, qs, packed, o, os, rows, lk, d, dv, scale, lse, work, 16);
}

void ck_attention_bf16_pack(const float *k, long ks, const float *v, long vs, long lk, long d, long dv, unsigned *packed) {
    if (ck_isa_active() >= CK_ISA_AVX512_BF16 && lk > 0) ab_pack(k, ks, v, vs, lk, d, dv, packed);
}

int ck_attention_forward_bf16(const float *q, long qs, const unsigned *packed, float *o, long os, long rows, long lk,
                              long d, long dv, float scale, float *lse, void *work) {
    if (ck_isa_active() < CK_ISA_AVX512_BF16 || lk < 1) return 0;
    ab_forward_cols(q, qs, packed, o, os, rows, lk, d, dv, scale, lse, work);
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
