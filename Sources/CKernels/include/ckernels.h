// Vector kernels of the tensor engine that need the CPU's full SIMD width: exp-based activations, the online
// softmax of the fused attention, group norm's fused SiLU, the Winograd transforms and GEMMs. Swift code compiles for
// baseline x86-64 (SSE2, 4 lanes); these functions are compiled once per ISA level (AVX-512, AVX2+FMA, baseline) and
// each call goes to the level chosen at load time from the CPU's features (cpu_features.c), lowered by the LDM_ISA
// environment variable, so one portable binary runs at the width of the machine.
#ifndef CKERNELS_H
#define CKERNELS_H

/// What CPUID / XGETBV (and, for AMX, Linux's arch_prctl) report. An instruction set counts only when the OS saves
/// its register state (XCR0): AVX/AVX2/FMA need the YMM state, AVX-512 the opmask and ZMM states, AMX the tile states.
typedef struct {
    char vendor[13];
    char brand[49];
    int sse41, avx, avx2, fma, f16c, bmi2;
    int avx512f, avx512bw, avx512vl, avx512dq, avx512cd, avx512_bf16, avx512_vnni, avx_vnni;
    int amx_tile, amx_bf16, amx_int8;
    /// XCR0: YMM state, opmask + ZMM state, tile config + data state saved by the OS.
    int os_ymm, os_zmm, os_tiles;
    /// Linux granted this process the AMX tile data state (ARCH_REQ_XCOMP_PERM), required before any tile instruction.
    int amx_permitted;
} ck_cpu_features;

/// Instruction-set levels of the dispatch, lowest first. The C kernels have code for BASELINE, AVX2 (with FMA) and
/// AVX512 (F/BW/VL/DQ/CD); AVX512_BF16 and AMX additionally allow native bf16 compute (oneDNN's avx512_core_bf16 /
/// avx512_core_amx kernels and our vdpbf16ps kernels).
typedef enum {
    CK_ISA_BASELINE = 0,
    CK_ISA_AVX2 = 1,
    CK_ISA_AVX512 = 2,
    CK_ISA_AVX512_BF16 = 3,
    CK_ISA_AMX = 4,
} ck_isa;

/// The features of this CPU (detected once).
const ck_cpu_features *ck_cpu(void);
/// The highest level this CPU and OS support.
ck_isa ck_isa_detected(void);
/// The level in use: the detected one, lowered by LDM_ISA=baseline|avx2|avx512|avx512_bf16|amx when set (a level
/// above the detected one is clamped to it). Chosen once, at load time.
ck_isa ck_isa_active(void);
/// The LDM_ISA value when it was not one of the names above (nil otherwise): it is then ignored.
const char *ck_isa_invalid_override(void);
/// Whether LDM_ISA asked for a level above what the CPU supports (clamped).
int ck_isa_clamped(void);
/// The level's name as LDM_ISA spells it.
const char *ck_isa_name(ck_isa isa);
/// The code level the ck_* kernels below run (BASELINE, AVX2 or AVX512: the bf16 levels run the AVX512 code).
ck_isa ck_kernels_level(void);
/// Switches the ck_* kernels to `isa` (clamped to ck_isa_active()) and returns the previous level; for tests that
/// compare the levels within one process. oneDNN's level is fixed at load time.
ck_isa ck_kernels_force(ck_isa isa);

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
/// Fused attention forward (FlashAttention-2) for `rows` query rows of one (batch, head): o[r] = softmax(scale q[r]
/// k^T) v over the keys j < lk (causal: j <= limit0 + r), rows of q, k, v, o `qs`, `ks`, `vs`, `os` floats apart
/// (last axis contiguous; head dims d and dv, any size). lse (nil: not written) gets each row's log-sum-exp of the
/// scaled scores (-inf for a row without keys, whose output is 0). work: ck_attention_work_floats(rows, d, dv) floats.
void ck_attention_forward(const float *q, long qs, const float *k, long ks, const float *v, long vs, float *o, long os,
                          long rows, long lk, long d, long dv, float scale, int causal, long limit0, float *lse,
                          float *work);
long ck_attention_work_floats(long rows, long d, long dv);
/// The same forward with q k^T and P V in native bf16 (vdpbf16ps: q, k, v and the probabilities rounded to bfloat16,
/// float32 accumulation, softmax in float32), no causal mask, on one head's keys and values packed once by
/// ck_attention_bf16_pack (ck_attention_bf16_packed_words(lk, d, dv) words; like the forward, a no-op without
/// AVX512_BF16); work:
/// ck_attention_bf16_work_bytes(rows, d, dv) bytes. Returns 0 without computing anything where the level in use has no
/// AVX512_BF16 (or lk is 0), else 1.
void ck_attention_bf16_pack(const float *k, long ks, const float *v, long vs, long lk, long d, long dv, unsigned *packed);
long ck_attention_bf16_packed_words(long lk, long d, long dv);
int ck_attention_forward_bf16(const float *q, long qs, const unsigned *packed, float *o, long os, long rows, long lk,
                              long d, long dv, float scale, float *lse, void *work);
long ck_attention_bf16_work_bytes(long rows, long d, long dv);
/// Attention backward row: p[i] = exp(p[i] - lse); ds[i] = p[i] * (ds[i] - delta) (p holds scaled scores on entry,
/// ds holds dO V^T). Columns from `masked_from` on are masked (p = ds = 0); pass n for none.
void ck_attention_backward_row(float *p, float *ds, long n, float lse, float delta, long masked_from);

/// Group norm's statistics of one group (`channels` rows of `spatial` floats at base): the mean, and 1/sqrt(var + eps)
/// with the variance from the squared deviations (two passes; row sums in float32 lanes, across rows in double).
void ck_group_stats(const float *base, long channels, long spatial, float eps, float *mean, float *rstd);
/// y[i] = z * sigmoid(z) with z = x[i] * a + b (group norm's affine map fused with SiLU), or y[i] = z when !silu.
void ck_affine(const float *x, float *y, long n, float a, float b, int silu);
/// Group norm + SiLU backward, first pass over one channel row: z = x * za + zb, dy = g * silu'(z) written to dy;
/// returns sum(dy) in *sum_dy and sum(dy * (x - mu) * r) in *sum_dy_xhat.
void ck_silu_affine_backward(const float *x, const float *g, float *dy, long n, float za, float zb, float mu, float r,
                             float *sum_dy, float *sum_dy_xhat);

/// GEGLU: rows of x hold [hidden | gate] (2n floats each); y (rows x n) = hidden * gelu(gate) (erf form).
void ck_geglu_forward(const float *x, float *y, long rows, long n);
/// ck_geglu_forward of x rounded to bfloat16, each result rounded to bfloat16 (nearest even) and stored as bf16 bits.
void ck_geglu_forward_bf16(const float *x, unsigned short *y, long rows, long n);
/// Its backward: rows of dx (2n floats) = [dy * gelu(gate) | dy * hidden * gelu'(gate)].
void ck_geglu_backward(const float *x, const float *dy, float *dx, long rows, long n);

/// y[i] = x[i] rounded to bfloat16 (nearest even; NaN stays NaN), as raw bf16 bits.
void ck_to_bf16(const float *x, unsigned short *y, long n);
/// x[i] rounded to bfloat16 in place (nearest even; NaN stays NaN), kept as float32.
void ck_round_bf16(float *x, long n);

/// Winograd F(2x2, 3x3) with bf16 operands (winograd_f2_bf16.c; 3x3, stride 1, padding 1, even h and w; NCHW float32
/// input and output). U[p][o][c] (16 x oc x ic bf16) for the output channels [o0, o1) from w (oc, ic, 3, 3), float32,
/// or bfloat16 when `bf16` is nonzero.
void ck_wf2_weights(const void *w, int bf16, long oc, long ic, long o0, long o1, unsigned short *u);
/// V[p][c][t] (16 x ic x tc bf16) of the tile rows [r0, r1) (numbered image by image; h / 2 per image) for the
/// channels [c0, c1): x's images xs_n floats apart, its channel planes xs_c.
void ck_wf2_input(const float *x, long xs_n, long xs_c, long h, long w, long r0, long r1, long c0, long c1, long ic,
                  unsigned short *v, long tc);
/// y = A^T M A + bias for the output channels [o0, o1) and the tile rows [r0, r1), from M[p][o][t] (16 x oc x tc
/// float32); y's images ys_n floats apart, its channel planes ys_c (h x w each).
void ck_wf2_output(const float *m, long tc, long oc, long o0, long o1, const float *bias, float *y, long ys_n, long ys_c,
                   long h, long w, long r0, long r1);

/// Winograd F(4x4, 3x3) convolution pieces (winograd.c): stride 1, dilation 1, one group, NCHW float32.
/// Floats of the transformed weights U for `oc` output and `ic` input channels: 36 * (icp * ocp / 16 + 1) * 16 (icp =
/// ic rounded up to 8, ocp = oc rounded up to 16; WINO_U_ALPHA_ROWS).
long ck_wino_u_floats(long oc, long ic);
/// Rows of 16 floats from one position alpha of U to the next (u_obs panels of icp rows, and one row of padding so
/// that the 36 stores of one channel's transform fall in different L1 sets).
#define WINO_U_ALPHA_ROWS(u_obs, icp) ((u_obs) * (icp) + 1)
/// U for the panels [ob0, ob1) of 16 output channels (ocp / 16 panels in all) into u, which holds the u_obs panels
/// from u_ob0 on (u[alpha][panel - u_ob0][icp][16], positions WINO_U_ALPHA_ROWS(u_obs, icp) rows apart): from w (oc, ic, 3, 3), or when `transposed` from w (ic, oc, 3, 3)
/// flipped in both spatial axes (the backward-data convolution of a (ic, oc) weight). w holds float32, or bfloat16 when
/// `bf16` is nonzero (widened exactly).
void ck_wino_weights(const void *w, int bf16, long oc, long ic, int transposed, float *u, long u_ob0, long u_obs, long ob0,
                     long ob1);
/// V for tiles [t0, t1) of a chunk whose first tile is the global tile `tile0` (tiles numbered image by image, row by
/// row, tiles_h x tiles_w per image; tile (ty, tx) reads input rows 4ty-pt..4ty-pt+5, outside [0,h)x[0,w) as zero).
/// x: channel planes of h x w floats, sn / sc floats apart per image / channel. v: 36 x tp x icp floats.
void ck_wino_input(const float *x, long c, long h, long w, long sn, long sc, long pt, long pl, long tiles_h,
                   long tiles_w, long tile0, long t0, long t1, float *v, long tp);
/// M[alpha] = V[alpha] U[alpha] for the panels of u (u_obs panels from u_ob0 on, laid out as ck_wino_weights writes
/// them), work items [item0, item1) of alpha * u_obs + (panel - u_ob0); tp is a multiple of 6.
void ck_wino_gemm(const float *v, const float *u, long u_ob0, long u_obs, float *m, long tp, long icp, long ocp,
                  long item0, long item1);
/// Input channels per slice of the fused weight transform (a multiple of 8), and output-channel panels made together.
#ifndef WINO_FUSED_KC
#define WINO_FUSED_KC 64
#endif
#ifndef WINO_FUSED_PANELS
#define WINO_FUSED_PANELS 4
#endif
/// Floats of the `work` buffer of ck_wino_fused (one per concurrent caller).
long ck_wino_fused_work_floats(void);
/// M[alpha] = V[alpha] U[alpha] for the output-channel panels [ob0, ob1), U made from the weights (as ck_wino_weights
/// reads them) slice by slice in `work` and never written whole; tp is a multiple of 6, rows <= tp the chunk's tiles
/// (M's rows from rows on may be left unwritten).
void ck_wino_fused(const void *w, int bf16, long oc, long ic, int transposed, const float *v, float *m, long tp,
                   long rows, long icp, long ocp, long ob0, long ob1, float *work);
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

// int8 (int8.c): the quantisation passes around oneDNN's u8 x s8 -> s32 kernels (TensorCore's Int8.swift). Call only
// where the level in use has AVX512_VNNI (compiled for x86-64-v4).
/// The u8 scale of a range [mn, mx] widened to include 0, and its zero point (0...255) in *zp.
float ck_i8_qparams(float mn, float mx, int *zp);
/// min and max of x[0..<n] and 0.
void ck_i8_minmax(const float *x, long n, float *mn, float *mx);
/// Each row of x (rows x cols) quantised to u8 with its own scale and zero point: q = clamp(rint(x / s) + zp, 0, 255).
void ck_i8_quantize_rows(const float *x, long rows, long cols, float *scale, int *zp, unsigned char *q);
/// Rows [y0, y1) of the padded image q (hp x wp x c, channels last) from one image x (c x h x w planes), quantised
/// with (scale, zp); padding (top pt, left pl, bottom pb, right pr) holds zp, the quantised 0.
void ck_i8_quantize_image(const float *x, long c, long h, long w, long pt, long pl, long pb, long pr, float scale,
                          int zp, unsigned char *q, long y0, long y1);
/// Weights (rows = output channels, cols) to s8 per row: scale = max|w| / 127, q = clamp(rint(w / scale), -127, 127);
/// wsum = the sum of each row's q.
void ck_i8_quantize_weights(const float *w, long rows, long cols, float *scale, int *wsum, signed char *q);
/// Rows [r0, r1) of y (rows x cols) = float(acc - zp[r] wsum[j]) * (sx[r] sw[j]) + bias[j] (bias may be NULL); y may be acc.
void ck_i8_dequantize_rows(const int *acc, float *y, long r0, long r1, long cols, const float *sx, const int *zp,
                           const float *sw, const int *wsum, const float *bias);
/// Positions [p0, p1) of one image: y (oc x hw planes) from acc (hw x oc, channels last), as ck_i8_dequantize_rows.
void ck_i8_dequantize_image(const int *acc, float *y, long oc, long hw, long p0, long p1, float sx, int zp,
                            const float *sw, const int *wsum, const float *bias);

#endif
