// The AVX-512 (512-bit) float32 attention forward of attention_avx512.c, called by the x86-64-v4 level of
// ck_attention_forward (attention_body.h); same arguments and result as ck_attention_forward.
#ifndef CKERNELS_ATTENTION_AVX512_H
#define CKERNELS_ATTENTION_AVX512_H
#if defined(__x86_64__)
void ck_attention_forward_avx512(const float *q, long qs, const float *k, long ks, const float *v, long vs, float *o,
                                 long os, long rows, long lk, long d, long dv, float scale, int causal, long limit0,
                                 float *lse, float *work);
long ck_attention_avx512_work_floats(long rows, long d, long dv);
#endif
#endif
