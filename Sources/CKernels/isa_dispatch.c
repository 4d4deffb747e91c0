// The ISA dispatch of the C kernels: kernels_body.h and winograd_body.h are compiled here once per level (baseline
// x86-64, x86-64-v3 = AVX2+FMA, x86-64-v4 = AVX-512 F/BW/VL/DQ/CD), each copy under its own names, and every
// exported ck_* function calls the copy of the level chosen at load time (cpu_features.c: the CPU's level, lowered by
// LDM_ISA). Explicit function pointers instead of the loader's target_clones resolver, so that the override governs
// them too.
#include "ckernels.h"
#include <math.h>
#include <string.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#define CK_TARGET
#define CK_LEVEL 0
#define FN(name) name##_l0
#include "kernels_body.h"
#include "winograd_body.h"
#include "attention_body.h"
#undef CK_TARGET
#undef CK_LEVEL
#undef FN

#if defined(__x86_64__)
#define CK_TARGET __attribute__((target("arch=x86-64-v3")))
#define CK_LEVEL 1
#define FN(name) name##_l1
#include "kernels_body.h"
#include "winograd_body.h"
#include "attention_body.h"
#undef CK_TARGET
#undef CK_LEVEL
#undef FN

#define CK_TARGET __attribute__((target("arch=x86-64-v4"), min_vector_width(512)))
#define CK_LEVEL 2
#define FN(name) name##_l2
#include "kernels_body.h"
#include "winograd_body.h"
#include "attention_body.h"
#undef CK_TARGET
#undef CK_LEVEL
#undef FN
#define LEVELS 3
#else
#define LEVELS 1
#endif

long ck_wino_u_floats(long oc, long ic) { return 36 * WINO_U_ALPHA_ROWS((oc + 15) / 16, (ic + 7) / 8 * 8) * 16; }

long ck_wino_fused_work_floats(void) { return 36L * (WINO_FUSED_KC + 1) * 16 * WINO_FUSED_PANELS; }

long ck_attention_work_floats(long rows, long d, long dv) {
    const long groups = (rows + AT_R - 1) / AT_R;
    const long dvw = (dv + AT_WORK_LIMIT_CB - 1) / AT_WORK_LIMIT_CB * AT_WORK_LIMIT_CB + AT_WORK_LIMIT_CB;
    const long body = groups * AT_R * (d + dvw + 2) + (AT_BK + AT_WORK_LIMIT_JB) * (AT_R + d) + AT_BK * dvw;
#if defined(__x86_64__)
    const long avx512 = ck_attention_avx512_work_floats(rows, d, dv);
    return body > avx512 ? body : avx512;
#else
    return body;
#endif
}

// Every exported kernel: X(return type, name, parameter list, argument list).
#define KERNELS(X) \
    X(void, ck_activation_forward, (ck_activation op, const float *x, float *y, long n), (op, x, y, n)) \
    X(void, ck_activation_backward, (ck_activation op, const float *g, const float *x, float *dx, long n), (op, g, x, dx, n)) \
    X(float, ck_max, (const float *x, long n), (x, n)) \
    X(float, ck_exp_shifted_sum, (float *x, long n, float shift), (x, n, shift)) \
    X(void, ck_attention_forward, (const float *q, long qs, const float *k, long ks, const float *v, long vs, float *o, \
      long os, long rows, long lk, long d, long dv, float scale, int causal, long limit0, float *lse, float *work), \
      (q, qs, k, ks, v, vs, o, os, rows, lk, d, dv, scale, causal, limit0, lse, work)) \
    X(void, ck_attention_backward_row, (float *p, float *ds, long n, float lse, float delta, long masked_from), \
      (p, ds, n, lse, delta, masked_from)) \
    X(void, ck_group_stats, (const float *base, long channels, long spatial, float eps, float *mean, float *rstd), \
      (base, channels, spatial, eps, mean, rstd)) \
    X(void, ck_affine, (const float *x, float *y, long n, float a, float b, int silu), (x, y, n, a, b, silu)) \
    X(void, ck_silu_affine_backward, (const float *x, const float *g, float *dy, long n, float za, float zb, float mu, \
      float r, float *sum_dy, float *sum_dy_xhat), (x, g, dy, n, za, zb, mu, r, sum_dy, sum_dy_xhat)) \
    X(void, ck_geglu_forward, (const float *x, float *y, long rows, long n), (x, y, rows, n)) \
    X(void, ck_geglu_forward_bf16, (const float *x, unsigned short *y, long rows, long n), (x, y, rows, n)) \
    X(void, ck_geglu_backward, (const float *x, const float *dy, float *dx, long rows, long n), (x, dy, dx, rows, n)) \
    X(void, ck_to_bf16, (const float *x, unsigned short *y, long n), (x, y, n)) \
    X(void, ck_round_bf16, (float *x, long n), (x, n)) \
    X(void, ck_wino_weights, (const void *w, int bf16, long oc, long ic, int transposed, float *u, long u_ob0, long u_obs, \
      long ob0, long ob1), (w, bf16, oc, ic, transposed, u, u_ob0, u_obs, ob0, ob1)) \
    X(void, ck_wino_input, (const float *x, long c, long h, long w, long sn, long sc, long pt, long pl, long tiles_h, \
      long tiles_w, long tile0, long t0, long t1, float *v, long tp), (x, c, h, w, sn, sc, pt, pl, tiles_h, tiles_w, tile0, t0, t1, v, tp)) \
    X(void, ck_wino_gemm, (const float *v, const float *u, long u_ob0, long u_obs, float *m, long tp, long icp, long ocp, \
      long item0, long item1), (v, u, u_ob0, u_obs, m, tp, icp, ocp, item0, item1)) \
    X(void, ck_wino_fused, (const void *w, int bf16, long oc, long ic, int transposed, const float *v, float *m, long tp, \
      long rows, long icp, long ocp, long ob0, long ob1, float *work), (w, bf16, oc, ic, transposed, v, m, tp, rows, icp, ocp, ob0, ob1, work)) \
    X(void, ck_wino_output, (const float *m, long tp, long ocp, long oc, const float *bias, float *y, long oh, long ow, \
      long sn, long sc, long tiles_h, long tiles_w, long tile0, long t0, long t1), \
      (m, tp, ocp, oc, bias, y, oh, ow, sn, sc, tiles_h, tiles_w, tile0, t0, t1)) \
    X(void, ck_wino_output_grad, (const float *dy, long oc, long oh, long ow, long sn, long sc, long tiles_h, \
      long tiles_w, long tile0, long t0, long t1, float *m, long tp), (dy, oc, oh, ow, sn, sc, tiles_h, tiles_w, tile0, t0, t1, m, tp)) \
    X(void, ck_wino_weight_gemm, (const float *v, const float *m, float *du, long tp, long icp, long ocp, long item0, \
      long item1), (v, m, du, tp, icp, ocp, item0, item1)) \
    X(void, ck_wino_weight_grad, (const float *du, long oc, long ic, float *dw, long ob0, long ob1), (du, oc, ic, dw, ob0, ob1))

// The table: one pointer per kernel, to the level-0 copy until ck_kernels_select runs (at load, before any caller).
#define FIELD(ret, name, params, args) ret (*name) params;
struct table { KERNELS(FIELD) };
#undef FIELD
#define ENTRY0(ret, name, params, args) .name = name##_l0,
#define ENTRY1(ret, name, params, args) .name = name##_l1,
#define ENTRY2(ret, name, params, args) .name = name##_l2,
static struct table active_table = { KERNELS(ENTRY0) };
#if defined(__x86_64__)
static const struct table tables[LEVELS] = { { KERNELS(ENTRY0) }, { KERNELS(ENTRY1) }, { KERNELS(ENTRY2) } };
#else
static const struct table tables[LEVELS] = { { KERNELS(ENTRY0) } };
#endif

static ck_isa kernels_level = CK_ISA_BASELINE;

static ck_isa code_level(ck_isa isa) { return isa > LEVELS - 1 ? (ck_isa)(LEVELS - 1) : isa; }

void ck_kernels_select(ck_isa isa) {
    kernels_level = code_level(isa);
    active_table = tables[kernels_level];
}

ck_isa ck_kernels_level(void) { return kernels_level; }

ck_isa ck_kernels_force(ck_isa isa) {
    const ck_isa was = kernels_level;
    ck_kernels_select(isa > ck_isa_active() ? ck_isa_active() : isa);
    return was;
}

#define EXPORT(ret, name, params, args) ret name params { return active_table.name args; }
KERNELS(EXPORT)
#undef EXPORT
