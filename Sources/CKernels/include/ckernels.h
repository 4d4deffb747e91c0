// Vector kernels of the tensor engine that need the CPU's full SIMD width: exp-based activations, the online
// softmax of the fused attention, group norm's fused SiLU. Swift code compiles for baseline x86-64 (SSE2, 4 lanes);
// these functions are compiled several times (AVX-512, AVX2+FMA, baseline) and the loader picks the best clone for
// the CPU it runs on (GCC/Clang `target_clones`), so one portable binary runs at the width of the machine.
#ifndef CKERNELS_H
#define CKERNELS_H

/// Elementwise activations (torch.nn.functional semantics; exp as Cephes' expf, erf as Abramowitz & Stegun 7.1.26).
typedef enum {
    CK_SILU = 0,       // x * sigmoid(x)
    CK_GELU_ERF = 1,   // 0.5 x (1 + erf(x / sqrt 2))
    CK_GELU_TANH = 2,  // 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
    CK_QUICK_GELU = 3, // x * sigmoid(1.702 x)
    CK_SIGMOID = 4,
    CK_TANH = 5,
} ck_activation;

/// y[i] = f(x[i]).
void ck_activation_forward(ck_activation op, const float *x, float *y, long n);
/// dx[i] = g[i] * f'(x[i]).
void ck_activation_backward(ck_activation op, const float *g, const float *x, float *dx, long n);

/// max(x[0..n)), -inf for n = 0.
float ck_max(const float *x, long n);
/// x[i] = exp(x[i] - shift) in place; returns the sum of the new values.
float ck_exp_shifted_sum(float *x, long n, float shift);
/// Attention backward row: p[i] = exp(p[i] - lse); ds[i] = p[i] * (ds[i] - delta) (p holds scaled scores on entry,
/// ds holds dO V^T). Columns from `masked_from` on are masked (p = ds = 0); pass n for none.
void ck_attention_backward_row(float *p, float *ds, long n, float lse, float delta, long masked_from);

/// y[i] = z * sigmoid(z) with z = x[i] * a + b (group norm's affine map fused with SiLU), or y[i] = z when !silu.
void ck_affine(const float *x, float *y, long n, float a, float b, int silu);
/// Group norm + SiLU backward, first pass over one channel row: z = x * za + zb, dy = g * silu'(z) written to dy;
/// returns sum(dy) in *sum_dy and sum(dy * (x - mu) * r) in *sum_dy_xhat.
void ck_silu_affine_backward(const float *x, const float *g, float *dy, long n, float za, float zb, float mu, float r,
                             float *sum_dy, float *sum_dy_xhat);

/// GEGLU: rows of x hold [hidden | gate] (2n floats each); y (rows x n) = hidden * gelu(gate) (erf form).
void ck_geglu_forward(const float *x, float *y, long rows, long n);
/// Its backward: rows of dx (2n floats) = [dy * gelu(gate) | dy * hidden * gelu'(gate)].
void ck_geglu_backward(const float *x, const float *dy, float *dx, long rows, long n);

/// Winograd F(4x4, 3x3) convolution pieces (winograd.c): stride 1, dilation 1, one group, NCHW float32.
/// Floats of the transformed weights U for `oc` output and `ic` input channels: 36 * icp * ocp (icp = ic rounded up
/// to 8, ocp = oc rounded up to 16).
long ck_wino_u_floats(long oc, long ic);
/// U for the panels [ob0, ob1) of 16 output channels (ocp / 16 panels in all) into u, which holds the u_obs panels
/// from u_ob0 on (u[alpha][panel - u_ob0][icp][16]): from w (oc, ic, 3, 3), or when `transposed` from w (ic, oc, 3, 3)
/// flipped in both spatial axes (the backward-data convolution of a (ic, oc) weight).
void ck_wino_weights(const float *w, long oc, long ic, int transposed, float *u, long u_ob0, long u_obs, long ob0, long ob1);
/// V for tiles [t0, t1) of a chunk whose first tile is the global tile `tile0` (tiles numbered image by image, row by
/// row, tiles_h x tiles_w per image; tile (ty, tx) reads input rows 4ty-pt..4ty-pt+5, outside [0,h)x[0,w) as zero).
/// x: channel planes of h x w floats, sn / sc floats apart per image / channel. v: 36 x tp x icp floats.
void ck_wino_input(const float *x, long c, long h, long w, long sn, long sc, long pt, long pl, long tiles_h,
                   long tiles_w, long tile0, long t0, long t1, float *v, long tp);
/// M[alpha] = V[alpha] U[alpha] for the panels of u (u_obs panels from u_ob0 on, laid out as ck_wino_weights writes
/// them), work items [item0, item1) of alpha * u_obs + (panel - u_ob0); tp is a multiple of 6.
void ck_wino_gemm(const float *v, const float *u, long u_ob0, long u_obs, float *m, long tp, long icp, long ocp,
                  long item0, long item1);
/// The output tiles [t0, t1) of the chunk: y = A^T M A + bias, clipped to oh x ow; y: planes of oh x ow floats,
/// sn / sc apart per image / channel.
void ck_wino_output(const float *m, long tp, long ocp, long oc, const float *bias, float *y, long oh, long ow,
                    long sn, long sc, long tiles_h, long tiles_w, long tile0, long t0, long t1);
/// Backward weights. The transformed output gradient A dY A^T of tiles [t0, t1) into m (36 x tp x ocp floats), dy laid
/// out as y of ck_wino_output.
void ck_wino_output_grad(const float *dy, long oc, long oh, long ow, long sn, long sc, long tiles_h, long tiles_w,
                         long tile0, long t0, long t1, float *m, long tp);
/// dU[alpha] (icp x ocp) += V[alpha]^T M[alpha] over the chunk's tp tiles, for items alpha * (ocp / 16) + panel.
void ck_wino_weight_gemm(const float *v, const float *m, float *du, long tp, long icp, long ocp, long item0, long item1);
/// dw (oc, ic, 3, 3) = G^T dU G for the groups [ob0, ob1) of 8 output channels.
void ck_wino_weight_grad(const float *du, long oc, long ic, float *dw, long ob0, long ob1);

#endif
