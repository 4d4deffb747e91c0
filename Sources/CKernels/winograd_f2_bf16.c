// Winograd F(2x2, 3x3) (Lavin & Gray, CVPR 2016) with its transformed operands in bf16, for 3x3 stride-1 padding-1
// convolutions under native bf16 (NativeBF16.swift's WinogradF2): 16 products per 2x2 output tile instead of 36, the
// 16 GEMMs M[p] = U[p] V[p] on oneDNN's bf16 matmul (float32 accumulation). F(2x2, 3x3)'s transforms add and subtract
// (G halves), so rounding V and U to bf16 costs about twice the error of the direct bf16 convolution
// (tools/bench/winograd_bf16_error.py), where F(4x4, 3x3)'s larger coefficients cost ten times.
//   V[p = 4i + j][c][t] = bf16((B^T d_t B)[i][j])   d_t: the 4x4 input patch of tile t (rows 2ty-1.., columns 2tx-1..)
//   U[p][o][c]          = bf16((G bf16(g_oc) G^T)[i][j])
//   y tile t            = A^T M_t A + bias
// with B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1], G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1], A^T = [1 1 1 0; 0 1 -1 -1].
// Tiles are numbered image by image, row by row (tiles_h = h / 2, tiles_w = w / 2: even sizes only); a chunk holds the
// tile rows [r0, r1) of that numbering, tc = (r1 - r0) * tiles_w tiles, the tile index innermost in V and M.
// Compiled for x86-64-v4 (vectorised 16 tiles at a time); called only where the CPU has AVX512_BF16.
#include "ckernels.h"
#include <string.h>

#if defined(__x86_64__)
#define F2_TARGET __attribute__((target("arch=x86-64-v4"), min_vector_width(512)))
#else
#define F2_TARGET
#endif

/// A float32 value rounded to bf16 (nearest even; finite inputs), as its 16 bits.
static inline F2_TARGET unsigned short f2_bf16(float f) {
    unsigned u;
    memcpy(&u, &f, 4);
    return (unsigned short)((u + 0x7fffu + ((u >> 16) & 1)) >> 16);
}

static inline F2_TARGET float f2_widen(unsigned short b) {
    const unsigned u = (unsigned)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

F2_TARGET void ck_wf2_weights(const void *w, int bf16, long oc, long ic, long o0, long o1, unsigned short *u) {
    const float *wf = (const float *)w;
    const unsigned short *wb = (const unsigned short *)w;
    const long plane = oc * ic;
    // 16 input channels at a time: their 3x3 filters gathered lane by lane (g[e][lane]), the transform vectorised
    // over the lanes, each of the 16 positions stored as 16 consecutive channels of U.
    for (long o = o0; o < o1; o++) {
        for (long c0 = 0; c0 < ic; c0 += 16) {
            const int lanes = ic - c0 < 16 ? (int)(ic - c0) : 16;
            float g[9][16], t[4][3][16];
            // A float32 weight rounded to bf16 first, as every native bf16 op rounds its weights (same U either way).
            if (bf16) {
                for (int l = 0; l < 16; l++) {
                    const unsigned short *src = wb + (o * ic + c0 + (l < lanes ? l : 0)) * 9;
                    for (int e = 0; e < 9; e++) g[e][l] = f2_widen(src[e]);
                }
            } else {
                for (int l = 0; l < 16; l++) {
                    const float *src = wf + (o * ic + c0 + (l < lanes ? l : 0)) * 9;
                    for (int e = 0; e < 9; e++) g[e][l] = f2_widen(f2_bf16(src[e]));
                }
            }
            for (int j = 0; j < 3; j++) { // t = G g
                for (int l = 0; l < 16; l++) {
                    const float a = g[j][l], b = g[3 + j][l], c = g[6 + j][l];
                    t[0][j][l] = a;
                    t[1][j][l] = 0.5f * (a + b + c);
                    t[2][j][l] = 0.5f * (a - b + c);
                    t[3][j][l] = c;
                }
            }
            for (int i = 0; i < 4; i++) { // U = t G^T
                unsigned short r[4][16];
                for (int l = 0; l < 16; l++) {
                    const float a = t[i][0][l], b = t[i][1][l], c = t[i][2][l];
                    r[0][l] = f2_bf16(a);
                    r[1][l] = f2_bf16(0.5f * (a + b + c));
                    r[2][l] = f2_bf16(0.5f * (a - b + c));
                    r[3][l] = f2_bf16(c);
                }
                for (int j = 0; j < 4; j++) memcpy(u + (long)(4 * i + j) * plane + o * ic + c0, r[j], (size_t)lanes * 2);
            }
        }
    }
}

F2_TARGET void ck_wf2_input(const float *x, long xs_n, long xs_c, long h, long w, long r0, long r1, long c0, long c1,
                            long ic, unsigned short *v, long tc) {
    const long th = h / 2, tw = w / 2, rowlen = w + 2;
    float buf[4][rowlen + 2], rt[4][4][tw];
    for (long c = c0; c < c1; c++) {
        for (long r = r0; r < r1; r++) {
            const long b = r / th, ty = r % th;
            const float *plane = x + b * xs_n + c * xs_c;
            for (int k = 0; k < 4; k++) { // input row 2ty - 1 + k, with a zero column either side
                const long y = 2 * ty - 1 + k;
                buf[k][0] = 0.0f;
                buf[k][w + 1] = 0.0f;
                if (y >= 0 && y < h) memcpy(&buf[k][1], plane + y * w, (size_t)w * sizeof(float));
                else memset(&buf[k][1], 0, (size_t)w * sizeof(float));
                for (long t = 0; t < tw; t++) { // d B across the row: columns 2t..2t+3 of buf
                    const float d0 = buf[k][2 * t], d1 = buf[k][2 * t + 1], d2 = buf[k][2 * t + 2], d3 = buf[k][2 * t + 3];
                    rt[k][0][t] = d0 - d2;
                    rt[k][1][t] = d1 + d2;
                    rt[k][2][t] = d2 - d1;
                    rt[k][3][t] = d1 - d3;
                }
            }
            const long col = (r - r0) * tw;
            for (int j = 0; j < 4; j++) { // B^T (d B) down the columns
                unsigned short *v0 = v + ((long)(0 + j) * ic + c) * tc + col, *v1 = v + ((long)(4 + j) * ic + c) * tc + col;
                unsigned short *v2 = v + ((long)(8 + j) * ic + c) * tc + col, *v3 = v + ((long)(12 + j) * ic + c) * tc + col;
                for (long t = 0; t < tw; t++) {
                    v0[t] = f2_bf16(rt[0][j][t] - rt[2][j][t]);
                    v1[t] = f2_bf16(rt[1][j][t] + rt[2][j][t]);
                    v2[t] = f2_bf16(rt[2][j][t] - rt[1][j][t]);
                    v3[t] = f2_bf16(rt[1][j][t] - rt[3][j][t]);
                }
            }
        }
    }
}

F2_TARGET void ck_wf2_output(const float *m, long tc, long oc, long o0, long o1, const float *bias, float *y, long ys_n,
                             long ys_c, long h, long w, long r0, long r1) {
    const long th = h / 2, tw = w / 2;
    for (long o = o0; o < o1; o++) {
        const float bo = bias ? bias[o] : 0.0f;
        for (long r = r0; r < r1; r++) {
            const long b = r / th, ty = r % th, col = (r - r0) * tw;
            const float *mp[16];
            for (int p = 0; p < 16; p++) mp[p] = m + ((long)p * oc + o) * tc + col;
            float *y0 = y + b * ys_n + o * ys_c + 2 * ty * w, *y1 = y0 + w;
            for (long t = 0; t < tw; t++) {
                float s[4][2];
                for (int i = 0; i < 4; i++) { // M A across each row
                    const float a0 = mp[4 * i][t], a1 = mp[4 * i + 1][t], a2 = mp[4 * i + 2][t], a3 = mp[4 * i + 3][t];
                    s[i][0] = a0 + a1 + a2;
                    s[i][1] = a1 - a2 - a3;
                }
                y0[2 * t] = s[0][0] + s[1][0] + s[2][0] + bo;
                y0[2 * t + 1] = s[0][1] + s[1][1] + s[2][1] + bo;
                y1[2 * t] = s[1][0] - s[2][0] - s[3][0] + bo;
                y1[2 * t + 1] = s[1][1] - s[2][1] - s[3][1] + bo;
            }
        }
    }
}
