// The float <-> int8 passes around the int8 (VNNI) GEMMs and convolutions of TensorCore's Int8.swift: weights
// quantised per output channel (symmetric s8 in [-127, 127]), activations quantised dynamically (asymmetric u8 with a
// zero point, per row of a linear layer's input or per image of a convolution's), and the int32 accumulators
// dequantised to float32 with the zero point's correction, the two scales and the bias. Called only where the CPU's
// level in use has AVX512_VNNI (Int8Compute.available), so they are compiled for x86-64-v4 on x86.
#include "ckernels.h"
#include <math.h>
#include <string.h>

#if defined(__x86_64__)
#define I8_TARGET __attribute__((target("arch=x86-64-v4"), min_vector_width(512)))
#else
#define I8_TARGET
#endif

// The one definition of the activation scale and zero point from a range that includes 0 (PyTorch's
// _calculate_qparams for quint8: scale = (max - min) / 255, zero_point = round(-min / scale)).
I8_TARGET float ck_i8_qparams(float mn, float mx, int *zp) {
    if (mn > 0) mn = 0;
    if (mx < 0) mx = 0;
    float scale = (mx - mn) / 255.0f;
    if (!(scale > 0) || !isfinite(scale)) scale = 1.0f;
    float z = rintf(-mn / scale);
    *zp = (int)(z < 0 ? 0 : z > 255 ? 255 : z);
    return scale;
}

I8_TARGET static inline unsigned char q_u8(float x, float scale, float zp) {
    float v = rintf(x / scale) + zp;
    v = v < 0 ? 0 : v > 255 ? 255 : v;
    return (unsigned char)v;
}

I8_TARGET void ck_i8_minmax(const float *x, long n, float *mn, float *mx) {
    float lo = 0, hi = 0;
    for (long i = 0; i < n; i++) {
        lo = x[i] < lo ? x[i] : lo;
        hi = x[i] > hi ? x[i] : hi;
    }
    *mn = lo;
    *mx = hi;
}

I8_TARGET void ck_i8_quantize_rows(const float *x, long rows, long cols, float *scale, int *zp, unsigned char *q) {
    for (long r = 0; r < rows; r++) {
        const float *xr = x + r * cols;
        float mn, mx;
        ck_i8_minmax(xr, cols, &mn, &mx);
        int z;
        float s = ck_i8_qparams(mn, mx, &z);
        scale[r] = s;
        zp[r] = z;
        unsigned char *qr = q + r * cols;
        float zf = (float)z;
        for (long i = 0; i < cols; i++) qr[i] = q_u8(xr[i], s, zf);
    }
}

I8_TARGET void ck_i8_quantize_image(const float *x, long c, long h, long w, long pt, long pl, long pb, long pr, float scale,
                                    int zp, unsigned char *q, long y0, long y1) {
    long wp = w + pl + pr, hp = h + pt + pb;
    float zf = (float)zp;
    for (long yp = y0; yp < y1 && yp < hp; yp++) {
        unsigned char *row = q + yp * wp * c;
        long y = yp - pt;
        if (y < 0 || y >= h) {
            memset(row, zp, (size_t)(wp * c));
            continue;
        }
        memset(row, zp, (size_t)(pl * c));
        memset(row + (pl + w) * c, zp, (size_t)(pr * c));
        unsigned char *out = row + pl * c;
        for (long ch = 0; ch < c; ch++) {
            const float *xr = x + (ch * h + y) * w;
            for (long i = 0; i < w; i++) out[i * c + ch] = q_u8(xr[i], scale, zf);
        }
    }
}

I8_TARGET void ck_i8_quantize_weights(const float *w, long rows, long cols, float *scale, int *wsum, signed char *q) {
    for (long r = 0; r < rows; r++) {
        const float *wr = w + r * cols;
        float amax = 0;
        for (long i = 0; i < cols; i++) {
            float a = fabsf(wr[i]);
            amax = a > amax ? a : amax;
        }
        float s = amax / 127.0f;
        if (!(s > 0) || !isfinite(s)) s = 1.0f;
        scale[r] = s;
        int sum = 0;
        for (long i = 0; i < cols; i++) {
            float v = rintf(wr[i] / s);
            v = v < -127 ? -127 : v > 127 ? 127 : v;
            q[r * cols + i] = (signed char)v;
            sum += (int)v;
        }
        wsum[r] = sum;
    }
}

I8_TARGET void ck_i8_dequantize_rows(const int *acc, float *y, long r0, long r1, long cols, const float *sx, const int *zp,
                                     const float *sw, const int *wsum, const float *bias) {
    for (long r = r0; r < r1; r++) {
        const int *a = acc + r * cols;
        float *o = y + r * cols;
        float s = sx[r];
        int z = zp[r];
        for (long j = 0; j < cols; j++) {
            float v = (float)(a[j] - z * wsum[j]) * (s * sw[j]);
            o[j] = bias ? v + bias[j] : v;
        }
    }
}

I8_TARGET void ck_i8_dequantize_image(const int *acc, float *y, long oc, long hw, long p0, long p1, float sx, int zp,
                                      const float *sw, const int *wsum, const float *bias) {
    enum { B = 64 };
    for (long pb = p0; pb < p1; pb += B) {
        long pe = pb + B < p1 ? pb + B : p1;
        for (long o = 0; o < oc; o++) {
            float m = sx * sw[o], b = bias ? bias[o] : 0;
            int corr = zp * wsum[o];
            float *yo = y + o * hw;
            for (long p = pb; p < pe; p++) {
                float v = (float)(acc[p * oc + o] - corr) * m;
                yo[p] = bias ? v + b : v;
            }
        }
    }
}
