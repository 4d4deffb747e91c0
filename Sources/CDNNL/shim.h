#include <oneapi/dnnl/dnnl.h>
#include <stdint.h>

#if DNNL_VERSION_MAJOR < 3
/// oneDNN 2.x exports its bf16 GEMM (row-major, as dnnl_sgemm: C = alpha op(A) op(B) + beta C, bf16 A and B, float32
/// accumulation and C; jit avx512_core_bf16 / amx kernels where the ISA allows) without declaring it in dnnl.h;
/// oneDNN 3 declares it there.
dnnl_status_t dnnl_gemm_bf16bf16f32(char transa, char transb, dnnl_dim_t M, dnnl_dim_t N, dnnl_dim_t K, float alpha,
                                    const uint16_t *A, dnnl_dim_t lda, const uint16_t *B, dnnl_dim_t ldb, float beta,
                                    float *C, dnnl_dim_t ldc);
#endif
