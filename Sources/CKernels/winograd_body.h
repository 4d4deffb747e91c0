// Winograd minimal filtering F(4x4, 3x3) (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016):
// a stride-1 3x3 cross-correlation computed tile by tile as Y = A^T [ (G g G^T) . (B^T d B) ] A, with 6x6 input
// tiles d, 4x4 output tiles Y and the interpolation points 0, +-1, +-2, inf. The elementwise products over
// channels become 36 independent GEMMs (one per position alpha of the 6x6 tile):
//   M[alpha] (tiles x OC) = V[alpha] (tiles x IC) * U[alpha] (IC x OC),
// 2.25 multiply-adds per output and input channel instead of the direct convolution's 9. Layouts (see ckernels.h):
//   U[alpha][ocb][ic][16]   transformed weights, output channels in panels of 16 (zero padded)
//   V[alpha][tile][icp]     transformed input tiles, channels padded to a multiple of 8 with zeros
//   M[alpha][tile][ocp]     GEMM results, ocp a multiple of 16
#include "ckernels.h"
#include "simd.h"

#ifndef WINO_FUSED_ZMM_ROWS
#define WINO_FUSED_ZMM_ROWS 12
#endif
#ifndef WINO_AVX512_ROWS
#define WINO_AVX512_ROWS 12
#endif

// B^T applied to six values (one column or row of a 6x6 input tile).
#define BT6(d, t) do { \
    t[0] = 4.0f * d[0] - 5.0f * d[2] + d[4]; \
    t[1] = -4.0f * (d[1] + d[2]) + d[3] + d[4]; \
    t[2] = 4.0f * (d[1] - d[2]) - d[3] + d[4]; \
    t[3] = 2.0f * (d[3] - d[1]) - d[2] + d[4]; \
    t[4] = 2.0f * (d[1] - d[3]) - d[2] + d[4]; \
    t[5] = 4.0f * d[1] - 5.0f * d[3] + d[5]; } while (0)
// A^T applied to six values.
#define AT6(m, s) do { \
    s[0] = m[0] + m[1] + m[2] + m[3] + m[4]; \
    s[1] = m[1] - m[2] + 2.0f * (m[3] - m[4]); \
    s[2] = m[1] + m[2] + 4.0f * (m[3] + m[4]); \
    s[3] = m[1] - m[2] + 8.0f * (m[3] - m[4]) + m[5]; } while (0)

// G applied to three values (one column or row of a 3x3 kernel).
#define G3(g, t) do { \
    t[0] = 0.25f * g[0]; \
    t[1] = (g[0] + g[1] + g[2]) * (-1.0f / 6.0f); \
    t[2] = (g[0] - g[1] + g[2]) * (-1.0f / 6.0f); \
    t[3] = g[0] * (1.0f / 24.0f) + g[1] * (1.0f / 12.0f) + g[2] * (1.0f / 6.0f); \
    t[4] = g[0] * (1.0f / 24.0f) - g[1] * (1.0f / 12.0f) + g[2] * (1.0f / 6.0f); \
    t[5] = g[2]; } while (0)

// U = G g G^T for the 8 output channels of `g` (g[k], k = 0..8, one vector of 8 channels per kernel tap), stored
// for input channel i into the 36 rows of u (panel-relative row base `row`).
#define WINO_WEIGHT_TRANSFORM(g, u, row, u_obs, icp, half) do { \
    v8f t_[18], r_[6]; \
    for (int c_ = 0; c_ < 3; c_++) { /* G g, column c */ \
        v8f col_[3] = {(g)[c_], (g)[3 + c_], (g)[6 + c_]}, tc_[6]; \
        G3(col_, tc_); \
        for (int a_ = 0; a_ < 6; a_++) t_[a_ * 3 + c_] = tc_[a_]; \
    } \
    for (int a_ = 0; a_ < 6; a_++) { /* (G g) G^T, row a */ \
        G3((t_ + a_ * 3), r_); \
        for (int b_ = 0; b_ < 6; b_++) STORE((u) + ((a_ * 6 + b_) * (u_obs) * (icp)) * 16 + (row) + (half) * 8, r_[b_]); \
    } \
} while (0)

// The 8 x 8 transpose of rows r[0..7] (vectors) into c[0..7]: c[j][l] = r[l][j].
#define TRANSPOSE8(r, c) do { \
    v8f a0_ = __builtin_shufflevector(r[0], r[1], 0, 8, 1, 9, 4, 12, 5, 13), a1_ = __builtin_shufflevector(r[0], r[1], 2, 10, 3, 11, 6, 14, 7, 15); \
    v8f a2_ = __builtin_shufflevector(r[2], r[3], 0, 8, 1, 9, 4, 12, 5, 13), a3_ = __builtin_shufflevector(r[2], r[3], 2, 10, 3, 11, 6, 14, 7, 15); \
    v8f a4_ = __builtin_shufflevector(r[4], r[5], 0, 8, 1, 9, 4, 12, 5, 13), a5_ = __builtin_shufflevector(r[4], r[5], 2, 10, 3, 11, 6, 14, 7, 15); \
    v8f a6_ = __builtin_shufflevector(r[6], r[7], 0, 8, 1, 9, 4, 12, 5, 13), a7_ = __builtin_shufflevector(r[6], r[7], 2, 10, 3, 11, 6, 14, 7, 15); \
    v8f b0_ = __builtin_shufflevector(a0_, a2_, 0, 1, 8, 9, 4, 5, 12, 13), b1_ = __builtin_shufflevector(a0_, a2_, 2, 3, 10, 11, 6, 7, 14, 15); \
    v8f b2_ = __builtin_shufflevector(a1_, a3_, 0, 1, 8, 9, 4, 5, 12, 13), b3_ = __builtin_shufflevector(a1_, a3_, 2, 3, 10, 11, 6, 7, 14, 15); \
    v8f b4_ = __builtin_shufflevector(a4_, a6_, 0, 1, 8, 9, 4, 5, 12, 13), b5_ = __builtin_shufflevector(a4_, a6_, 2, 3, 10, 11, 6, 7, 14, 15); \
    v8f b6_ = __builtin_shufflevector(a5_, a7_, 0, 1, 8, 9, 4, 5, 12, 13), b7_ = __builtin_shufflevector(a5_, a7_, 2, 3, 10, 11, 6, 7, 14, 15); \
    c[0] = __builtin_shufflevector(b0_, b4_, 0, 1, 2, 3, 8, 9, 10, 11); c[4] = __builtin_shufflevector(b0_, b4_, 4, 5, 6, 7, 12, 13, 14, 15); \
    c[1] = __builtin_shufflevector(b1_, b5_, 0, 1, 2, 3, 8, 9, 10, 11); c[5] = __builtin_shufflevector(b1_, b5_, 4, 5, 6, 7, 12, 13, 14, 15); \
    c[2] = __builtin_shufflevector(b2_, b6_, 0, 1, 2, 3, 8, 9, 10, 11); c[6] = __builtin_shufflevector(b2_, b6_, 4, 5, 6, 7, 12, 13, 14, 15); \
    c[3] = __builtin_shufflevector(b3_, b7_, 0, 1, 2, 3, 8, 9, 10, 11); c[7] = __builtin_shufflevector(b3_, b7_, 4, 5, 6, 7, 12, 13, 14, 15); \
} while (0)

// U of output-channel panel `ob` for the input channels [i_begin, i_end) (i_begin a multiple of 8, i_end <= icp; the
// channels from ic on are zeros): the value for (alpha, input channel i, output channel o of the panel) goes to
// up[alpha * alpha_rows * 16 + (i - i_begin) * 16 + o].
CLONES void FN(wino_weights_panel)(const void *weights, int bf16, long oc, long ic, int transposed, float *up,
                                   long alpha_rows, long ob, long i_begin, long i_end) {
    const float *w = bf16 ? NULL : (const float *)weights;
    const unsigned short *wb = bf16 ? (const unsigned short *)weights : NULL;
    // Element e of the weight as float32 (bf16 widened exactly).
#define WEL(e) (bf16 ? bf16_to_float(wb[e]) : w[e])
    long i0 = i_begin;
    if (!transposed && ic % 8 == 0) {
        // Fast path: 8 input channels x 8 output channels at a time. Row l of the block is the 72 contiguous
        // floats w[o0 + l][i0 .. i0 + 7][0 .. 8]; nine 8 x 8 transposes turn them into one vector of 8 output
        // channels per (input channel, tap).
        for (; i0 < i_end && i0 < ic; i0 += 8) {
            for (int half = 0; half < 2; half++) {
                const long o0 = ob * 16 + half * 8;
                v8f g[72];
                if (o0 + 8 <= oc) {
                    for (int j = 0; j < 9; j++) {
                        v8f r[8], c[8];
                        if (bf16) for (int l = 0; l < 8; l++) r[l] = LOAD_BF16(wb + ((o0 + l) * ic + i0) * 9 + j * 8);
                        else for (int l = 0; l < 8; l++) r[l] = LOAD(w + ((o0 + l) * ic + i0) * 9 + j * 8);
                        TRANSPOSE8(r, c);
                        for (int l = 0; l < 8; l++) g[j * 8 + l] = c[l];
                    }
                } else {
                    float buf[72][8];
                    for (int l = 0; l < 8; l++)
                        for (int e = 0; e < 72; e++) buf[e][l] = o0 + l < oc ? WEL(((o0 + l) * ic + i0) * 9 + e) : 0.0f;
                    for (int e = 0; e < 72; e++) g[e] = LOAD(buf[e]);
                }
                for (int ii = 0; ii < 8; ii++) WINO_WEIGHT_TRANSFORM((g + ii * 9), up, (i0 - i_begin + ii) * 16, 1, alpha_rows, half);
            }
        }
    }
    for (long i = i0; i < i_end; i++) {
        for (int half = 0; half < 2; half++) {
            float buf[9][8];
            for (int l = 0; l < 8; l++) {
                const long o = ob * 16 + half * 8 + l;
                for (int k = 0; k < 9; k++)
                    buf[k][l] = (o >= oc || i >= ic) ? 0.0f
                        : transposed ? WEL((i * oc + o) * 9 + 8 - k) // w is (ic, oc, 3, 3), flipped
                        : WEL((o * ic + i) * 9 + k);
            }
            v8f g[9];
            for (int k = 0; k < 9; k++) g[k] = LOAD(buf[k]);
            WINO_WEIGHT_TRANSFORM(g, up, (i - i_begin) * 16, 1, alpha_rows, half);
        }
    }
}

CLONES void FN(ck_wino_weights)(const void *weights, int bf16, long oc, long ic, int transposed, float *u, long u_ob0,
                            long u_obs, long ob0, long ob1) {
    const long icp = (ic + 7) / 8 * 8;
    for (long ob = ob0; ob < ob1; ob++)
        FN(wino_weights_panel)(weights, bf16, oc, ic, transposed, u + (ob - u_ob0) * icp * 16, WINO_U_ALPHA_ROWS(u_obs, icp), ob, 0, icp);
}

#undef WEL

CLONES void FN(ck_wino_input)(const float *x, long c, long h, long w, long sn, long sc, long pt, long pl, long tiles_h,
                          long tiles_w, long tile0, long t0, long t1, float *v, long tp) {
    const long icp = (c + 7) / 8 * 8;
    for (long t = t0; t < t1; t++) {
        const long g = tile0 + t, img = g / (tiles_h * tiles_w), ty = g / tiles_w % tiles_h, tx = g % tiles_w;
        const long y0 = ty * 4 - pt, x0 = tx * 4 - pl;
        const int inside = y0 >= 0 && x0 >= 0 && y0 + 6 <= h && x0 + 6 <= w;
        const float *base = x + img * sn;
        for (long c0 = 0; c0 < icp; c0 += 8) {
            float buf[36][8];
            for (int l = 0; l < 8; l++) {
                const long ch = c0 + l;
                if (ch >= c) { for (int k = 0; k < 36; k++) buf[k][l] = 0.0f; continue; }
                const float *p = base + ch * sc;
                if (inside) {
                    for (int i = 0; i < 6; i++) for (int j = 0; j < 6; j++) buf[i * 6 + j][l] = p[(y0 + i) * w + x0 + j];
                } else {
                    for (int i = 0; i < 6; i++) for (int j = 0; j < 6; j++) {
                        const long yy = y0 + i, xx = x0 + j;
                        buf[i * 6 + j][l] = (yy >= 0 && yy < h && xx >= 0 && xx < w) ? p[yy * w + xx] : 0.0f;
                    }
                }
            }
            v8f d[36], s[36];
            for (int k = 0; k < 36; k++) d[k] = LOAD(buf[k]);
            for (int j = 0; j < 6; j++) { // columns: s[.][j] = B^T d[.][j]
                v8f col[6] = {d[j], d[6 + j], d[12 + j], d[18 + j], d[24 + j], d[30 + j]}, r[6];
                BT6(col, r);
                for (int i = 0; i < 6; i++) s[i * 6 + j] = r[i];
            }
            for (int i = 0; i < 6; i++) { // rows: (B^T d) B
                v8f r[6];
                BT6((s + i * 6), r);
                for (int j = 0; j < 6; j++) STORE(v + ((i * 6 + j) * tp + t) * icp + c0, r[j]);
            }
        }
    }
}

#if CK_LEVEL >= 2
// AVX-512: R tile rows x one 16-wide zmm panel per step (R accumulators of the 32 registers, each B row loaded once
// per R rows instead of once per 6: half or a quarter of the AVX2 kernel's panel traffic from L2).
typedef float v16f __attribute__((vector_size(64)));
#define LOAD16(p) ({ v16f l_; memcpy(&l_, (p), sizeof l_); l_; })
#define STORE16(p, v) do { v16f s_ = (v); memcpy((p), &s_, sizeof s_); } while (0)
#define WINO_ROWS16(R, va, up, ma, t, icp, ocp) do { \
    v16f c_[R]; \
    _Pragma("clang loop unroll(full)") for (int r_ = 0; r_ < R; r_++) c_[r_] = (v16f){0}; \
    const float *p_ = (va) + (t) * (icp), *b_ = (up); \
    for (long k_ = 0; k_ < (icp); k_++, b_ += 16, p_++) { \
        const v16f bv_ = LOAD16(b_); \
        _Pragma("clang loop unroll(full)") for (int r_ = 0; r_ < R; r_++) c_[r_] += p_[r_ * (icp)] * bv_; \
    } \
    float *q_ = (ma) + (t) * (ocp); \
    _Pragma("clang loop unroll(full)") for (int r_ = 0; r_ < R; r_++) STORE16(q_ + r_ * (ocp), c_[r_]); \
} while (0)
#endif

CLONES void FN(ck_wino_gemm)(const float *v, const float *u, long u_ob0, long u_obs, float *m, long tp, long icp, long ocp,
                         long item0, long item1) {
    for (long item = item0; item < item1; item++) {
        const long a = item / u_obs, ob = u_ob0 + item % u_obs;
        const float *va = v + a * tp * icp, *up = u + (a * WINO_U_ALPHA_ROWS(u_obs, icp) + (ob - u_ob0) * icp) * 16;
        float *ma = m + a * tp * ocp + ob * 16;
        long t0 = 0;
#if CK_LEVEL >= 2
        for (; t0 + WINO_AVX512_ROWS <= tp; t0 += WINO_AVX512_ROWS) WINO_ROWS16(WINO_AVX512_ROWS, va, up, ma, t0, icp, ocp);
#endif
        for (long t = t0; t < tp; t += 6) {
            const float *p0 = va + t * icp, *p1 = p0 + icp, *p2 = p1 + icp, *p3 = p2 + icp, *p4 = p3 + icp, *p5 = p4 + icp;
            v8f c00 = SPLAT(0), c01 = SPLAT(0), c10 = SPLAT(0), c11 = SPLAT(0), c20 = SPLAT(0), c21 = SPLAT(0);
            v8f c30 = SPLAT(0), c31 = SPLAT(0), c40 = SPLAT(0), c41 = SPLAT(0), c50 = SPLAT(0), c51 = SPLAT(0);
            const float *b = up;
            for (long k = 0; k < icp; k++, b += 16) {
                const v8f b0 = LOAD(b), b1 = LOAD(b + 8);
                v8f x;
                x = SPLAT(p0[k]); c00 += x * b0; c01 += x * b1;
                x = SPLAT(p1[k]); c10 += x * b0; c11 += x * b1;
                x = SPLAT(p2[k]); c20 += x * b0; c21 += x * b1;
                x = SPLAT(p3[k]); c30 += x * b0; c31 += x * b1;
                x = SPLAT(p4[k]); c40 += x * b0; c41 += x * b1;
                x = SPLAT(p5[k]); c50 += x * b0; c51 += x * b1;
            }
            float *q = ma + t * ocp;
            STORE(q, c00); STORE(q + 8, c01); q += ocp;
            STORE(q, c10); STORE(q + 8, c11); q += ocp;
            STORE(q, c20); STORE(q + 8, c21); q += ocp;
            STORE(q, c30); STORE(q + 8, c31); q += ocp;
            STORE(q, c40); STORE(q + 8, c41); q += ocp;
            STORE(q, c50); STORE(q + 8, c51);
        }
    }
}

// The weight transform fused into the GEMMs (small tile counts, where U would be streamed through memory for few
// rows of V): per output-channel panel and slice of WINO_FUSED_KC input channels, U of the 36 positions is made in
// `work` (ck_wino_fused_work_floats floats, a few hundred KB: it stays in L2) and consumed at once by all tile rows;
// M accumulates over the slices. The whole U is never written.
#define WINO_ACC_ROWS8(va, ub, ma, t, ldv, kc, ocp, first) do { \
    v8f c_[6][2]; \
    float *q_ = (ma) + (t) * (ocp); \
    for (int r_ = 0; r_ < 6; r_++) { \
        c_[r_][0] = (first) ? SPLAT(0) : LOAD(q_ + r_ * (ocp)); \
        c_[r_][1] = (first) ? SPLAT(0) : LOAD(q_ + r_ * (ocp) + 8); \
    } \
    const float *p_ = (va) + (t) * (ldv), *b_ = (ub); \
    for (long k_ = 0; k_ < (kc); k_++, b_ += 16, p_++) { \
        const v8f b0_ = LOAD(b_), b1_ = LOAD(b_ + 8); \
        _Pragma("clang loop unroll(full)") for (int r_ = 0; r_ < 6; r_++) { \
            const v8f x_ = SPLAT(p_[r_ * (ldv)]); \
            c_[r_][0] += x_ * b0_; c_[r_][1] += x_ * b1_; \
        } \
    } \
    for (int r_ = 0; r_ < 6; r_++) { STORE(q_ + r_ * (ocp), c_[r_][0]); STORE(q_ + r_ * (ocp) + 8, c_[r_][1]); } \
} while (0)
#if CK_LEVEL >= 2
#define WINO_ACC_ROWS16(R, va, ub, ma, t, ldv, kc, ocp, first) do { \
    v16f c_[R]; \
    float *q_ = (ma) + (t) * (ocp); \
    _Pragma("clang loop unroll(full)") for (int r_ = 0; r_ < R; r_++) c_[r_] = (first) ? (v16f){0} : LOAD16(q_ + r_ * (ocp)); \
    const float *p_ = (va) + (t) * (ldv), *b_ = (ub); \
    for (long k_ = 0; k_ < (kc); k_++, b_ += 16, p_++) { \
        const v16f bv_ = LOAD16(b_); \
        _Pragma("clang loop unroll(full)") for (int r_ = 0; r_ < R; r_++) c_[r_] += p_[r_ * (ldv)] * bv_; \
    } \
    _Pragma("clang loop unroll(full)") for (int r_ = 0; r_ < R; r_++) STORE16(q_ + r_ * (ocp), c_[r_]); \
} while (0)
#endif

CLONES void FN(ck_wino_fused)(const void *weights, int bf16, long oc, long ic, int transposed, const float *v, float *m,
                          long tp, long rows, long icp, long ocp, long ob0, long ob1, float *work) {
    // Groups of WINO_FUSED_PANELS panels: each block of V rows is read from memory once per group (and from L1 for
    // the group's other panels), not once per panel.
    for (long g0 = ob0; g0 < ob1; g0 += WINO_FUSED_PANELS) {
        const long np = ob1 - g0 < WINO_FUSED_PANELS ? ob1 - g0 : WINO_FUSED_PANELS;
        for (long k0 = 0; k0 < icp; k0 += WINO_FUSED_KC) {
            const long kc = icp - k0 < WINO_FUSED_KC ? icp - k0 : WINO_FUSED_KC;
            const int first = k0 == 0;
            // Positions (kc + 1) rows apart, not kc: the 36 stores of one channel go to 36 L1 sets, not one.
            const long panel_floats = 36 * (kc + 1) * 16;
            for (long p = 0; p < np; p++)
                FN(wino_weights_panel)(weights, bf16, oc, ic, transposed, work + p * panel_floats, kc + 1, g0 + p, k0, k0 + kc);
            for (long a = 0; a < 36; a++) {
                const float *va = v + a * tp * icp + k0;
                float *ma = m + a * tp * ocp + g0 * 16;
                long t = 0;
#if CK_LEVEL >= 2 && WINO_FUSED_ZMM_ROWS > 0
                for (; t + WINO_FUSED_ZMM_ROWS <= rows; t += WINO_FUSED_ZMM_ROWS)
                    for (long p = 0; p < np; p++)
                        WINO_ACC_ROWS16(WINO_FUSED_ZMM_ROWS, va, work + p * panel_floats + a * (kc + 1) * 16, ma + p * 16, t, icp, kc, ocp, first);
                // The remaining 1-11 tiles, rounded up to an even count (the padding rows of V are zeros and tp is a
                // multiple of 6): not a whole 6-row block each (8 tiles: one block of 8, not 12 or 6 + 6).
#define WINO_FUSED_TAIL(R) case R: \
                    for (long p = 0; p < np; p++) \
                        WINO_ACC_ROWS16(R, va, work + p * panel_floats + a * (kc + 1) * 16, ma + p * 16, t, icp, kc, ocp, first); \
                    break;
                switch ((rows - t + 1) / 2 * 2) {
                    WINO_FUSED_TAIL(2) WINO_FUSED_TAIL(4) WINO_FUSED_TAIL(6) WINO_FUSED_TAIL(8) WINO_FUSED_TAIL(10) WINO_FUSED_TAIL(12)
                    default: break;
                }
#undef WINO_FUSED_TAIL
                t = tp;
#endif
                for (; t < tp; t += 6)
                    for (long p = 0; p < np; p++)
                        WINO_ACC_ROWS8(va, work + p * panel_floats + a * (kc + 1) * 16, ma + p * 16, t, icp, kc, ocp, first);
            }
        }
    }
}

CLONES void FN(ck_wino_output)(const float *m, long tp, long ocp, long oc, const float *bias, float *y, long oh, long ow,
                           long sn, long sc, long tiles_h, long tiles_w, long tile0, long t0, long t1) {
    for (long t = t0; t < t1; t++) {
        const long g = tile0 + t, img = g / (tiles_h * tiles_w), ty = g / tiles_w % tiles_h, tx = g % tiles_w;
        const long y0 = ty * 4, x0 = tx * 4, rows = oh - y0 < 4 ? oh - y0 : 4, cols = ow - x0 < 4 ? ow - x0 : 4;
        float *base = y + img * sn + y0 * ow + x0;
        for (long o0 = 0; o0 < oc; o0 += 8) {
            v8f mv[36], s[24];
            for (int k = 0; k < 36; k++) mv[k] = LOAD(m + (k * tp + t) * ocp + o0);
            for (int j = 0; j < 6; j++) {
                v8f col[6] = {mv[j], mv[6 + j], mv[12 + j], mv[18 + j], mv[24 + j], mv[30 + j]}, r[4];
                AT6(col, r);
                for (int i = 0; i < 4; i++) s[i * 6 + j] = r[i];
            }
            float out[16][8];
            v8f bv = SPLAT(0);
            if (bias) { float bb[8] = {0}; memcpy(bb, bias + o0, (size_t)(oc - o0 < 8 ? oc - o0 : 8) * sizeof(float)); bv = LOAD(bb); }
            for (int i = 0; i < 4; i++) {
                v8f r[4];
                AT6((s + i * 6), r);
                for (int j = 0; j < 4; j++) STORE(out[i * 4 + j], r[j] + bv);
            }
            const long lanes = oc - o0 < 8 ? oc - o0 : 8;
            for (long l = 0; l < lanes; l++) {
                float *p = base + (o0 + l) * sc;
                for (long i = 0; i < rows; i++)
                    for (long j = 0; j < cols; j++) p[i * ow + j] = out[i * 4 + j][l];
            }
        }
    }
}

// ---- Backward weights: dg = G^T [ sum over tiles of (B^T d B) . (A dY A^T) ] G, per (input, output channel) pair.

CLONES void FN(ck_wino_output_grad)(const float *dy, long oc, long oh, long ow, long sn, long sc, long tiles_h,
                                long tiles_w, long tile0, long t0, long t1, float *m, long tp) {
    const long ocp = (oc + 15) / 16 * 16;
    for (long t = t0; t < t1; t++) {
        const long g = tile0 + t, img = g / (tiles_h * tiles_w), ty = g / tiles_w % tiles_h, tx = g % tiles_w;
        const long y0 = ty * 4, x0 = tx * 4, rows = oh - y0 < 4 ? oh - y0 : 4, cols = ow - x0 < 4 ? ow - x0 : 4;
        const float *base = dy + img * sn + y0 * ow + x0;
        for (long o0 = 0; o0 < ocp; o0 += 8) {
            float buf[16][8];
            for (int l = 0; l < 8; l++) {
                const long o = o0 + l;
                for (int i = 0; i < 4; i++) for (int j = 0; j < 4; j++)
                    buf[i * 4 + j][l] = (o < oc && i < rows && j < cols) ? base[o * sc + i * ow + j] : 0.0f;
            }
            v8f d[16], s[24];
            for (int k = 0; k < 16; k++) d[k] = LOAD(buf[k]);
            // A Y A^T with A = (A^T)^T (6x4): A applied to a 4-vector y gives
            // (y0, y0+y1+y2+y3, y0-y1+y2-y3, y0+2y1+4y2+8y3, y0-2y1+4y2-8y3, y3).
#define A4(y, z) do { \
    z[0] = y[0]; \
    z[1] = y[0] + y[1] + y[2] + y[3]; \
    z[2] = y[0] - y[1] + y[2] - y[3]; \
    z[3] = y[0] + 2.0f * y[1] + 4.0f * y[2] + 8.0f * y[3]; \
    z[4] = y[0] - 2.0f * y[1] + 4.0f * y[2] - 8.0f * y[3]; \
    z[5] = y[3]; } while (0)
            for (int j = 0; j < 4; j++) { // columns
                v8f col[4] = {d[j], d[4 + j], d[8 + j], d[12 + j]}, z[6];
                A4(col, z);
                for (int i = 0; i < 6; i++) s[i * 4 + j] = z[i];
            }
            for (int i = 0; i < 6; i++) { // rows
                v8f z[6];
                A4((s + i * 4), z);
                for (int j = 0; j < 6; j++) STORE(m + ((i * 6 + j) * tp + t) * ocp + o0, z[j]);
            }
        }
    }
}

CLONES void FN(ck_wino_weight_gemm)(const float *v, const float *m, float *du, long tp, long icp, long ocp, long item0, long item1) {
    const long ocbs = ocp / 16;
    for (long item = item0; item < item1; item++) {
        const long a = item / ocbs, ob = item % ocbs;
        const float *va = v + a * tp * icp, *ma = m + a * tp * ocp + ob * 16;
        float *da = du + a * icp * ocp + ob * 16;
        long i = 0;
        for (; i + 6 <= icp; i += 6) {
            v8f c00 = SPLAT(0), c01 = SPLAT(0), c10 = SPLAT(0), c11 = SPLAT(0), c20 = SPLAT(0), c21 = SPLAT(0);
            v8f c30 = SPLAT(0), c31 = SPLAT(0), c40 = SPLAT(0), c41 = SPLAT(0), c50 = SPLAT(0), c51 = SPLAT(0);
            const float *p = va + i, *b = ma;
            for (long k = 0; k < tp; k++, p += icp, b += ocp) {
                const v8f b0 = LOAD(b), b1 = LOAD(b + 8);
                v8f x;
                x = SPLAT(p[0]); c00 += x * b0; c01 += x * b1;
                x = SPLAT(p[1]); c10 += x * b0; c11 += x * b1;
                x = SPLAT(p[2]); c20 += x * b0; c21 += x * b1;
                x = SPLAT(p[3]); c30 += x * b0; c31 += x * b1;
                x = SPLAT(p[4]); c40 += x * b0; c41 += x * b1;
                x = SPLAT(p[5]); c50 += x * b0; c51 += x * b1;
            }
            float *q = da + i * ocp;
            STORE(q, LOAD(q) + c00); STORE(q + 8, LOAD(q + 8) + c01); q += ocp;
            STORE(q, LOAD(q) + c10); STORE(q + 8, LOAD(q + 8) + c11); q += ocp;
            STORE(q, LOAD(q) + c20); STORE(q + 8, LOAD(q + 8) + c21); q += ocp;
            STORE(q, LOAD(q) + c30); STORE(q + 8, LOAD(q + 8) + c31); q += ocp;
            STORE(q, LOAD(q) + c40); STORE(q + 8, LOAD(q + 8) + c41); q += ocp;
            STORE(q, LOAD(q) + c50); STORE(q + 8, LOAD(q + 8) + c51);
        }
        for (; i + 2 <= icp; i += 2) { // icp is a multiple of 8: 0, 2 or 4 rows remain
            v8f c00 = SPLAT(0), c01 = SPLAT(0), c10 = SPLAT(0), c11 = SPLAT(0);
            const float *p = va + i, *b = ma;
            for (long k = 0; k < tp; k++, p += icp, b += ocp) {
                const v8f b0 = LOAD(b), b1 = LOAD(b + 8);
                v8f x;
                x = SPLAT(p[0]); c00 += x * b0; c01 += x * b1;
                x = SPLAT(p[1]); c10 += x * b0; c11 += x * b1;
            }
            float *q = da + i * ocp;
            STORE(q, LOAD(q) + c00); STORE(q + 8, LOAD(q + 8) + c01); q += ocp;
            STORE(q, LOAD(q) + c10); STORE(q + 8, LOAD(q + 8) + c11);
        }
    }
}

CLONES void FN(ck_wino_weight_grad)(const float *du, long oc, long ic, float *dw, long ob0, long ob1) {
    const long icp = (ic + 7) / 8 * 8, ocp = (oc + 15) / 16 * 16;
    // G^T (3x6) applied to a 6-vector z gives
    // (z0/4 - (z1+z2)/6 + (z3+z4)/24, (z2-z1)/6 + (z3-z4)/12, -(z1+z2)/6 + (z3+z4)/6 + z5).
#define GT6(z, r) do { \
    r[0] = 0.25f * z[0] - (z[1] + z[2]) * (1.0f / 6.0f) + (z[3] + z[4]) * (1.0f / 24.0f); \
    r[1] = (z[2] - z[1]) * (1.0f / 6.0f) + (z[3] - z[4]) * (1.0f / 12.0f); \
    r[2] = -(z[1] + z[2]) * (1.0f / 6.0f) + (z[3] + z[4]) * (1.0f / 6.0f) + z[5]; } while (0)
    for (long o0 = ob0 * 8; o0 < ob1 * 8 && o0 < oc; o0 += 8) { // 8 output channels per vector
        for (long i = 0; i < ic; i++) {
            v8f z[36], t[18];
            for (int a = 0; a < 36; a++) z[a] = LOAD(du + (a * icp + i) * ocp + o0);
            for (int j = 0; j < 6; j++) { // columns: G^T Z
                v8f col[6] = {z[j], z[6 + j], z[12 + j], z[18 + j], z[24 + j], z[30 + j]}, r[3];
                GT6(col, r);
                for (int k = 0; k < 3; k++) t[k * 6 + j] = r[k];
            }
            float out[9][8];
            for (int k = 0; k < 3; k++) { // rows: (G^T Z) G
                v8f r[3];
                GT6((t + k * 6), r);
                for (int l = 0; l < 3; l++) STORE(out[k * 3 + l], r[l]);
            }
            const long lanes = oc - o0 < 8 ? oc - o0 : 8;
            for (long l = 0; l < lanes; l++)
                for (int k = 0; k < 9; k++) dw[((o0 + l) * ic + i) * 9 + k] = out[k][l];
        }
    }
}
