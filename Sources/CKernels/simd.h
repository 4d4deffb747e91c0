// Shared by the C kernels: the ISA clones and the 8-lane float vector helpers (Clang/GCC vector extensions).
#ifndef CKERNELS_SIMD_H
#define CKERNELS_SIMD_H
#include <string.h>

// Each kernel body (kernels_body.h, winograd_body.h) is compiled once per ISA level by isa_dispatch.c, which
// defines FN(name) (the level's name for the function), CK_TARGET (its target attribute) and CK_LEVEL (0 baseline,
// 1 AVX2+FMA, 2 AVX-512) before including it; the exported ck_* functions call the level chosen at run time.
#define CLONES static CK_TARGET __attribute__((noinline))

typedef float v8f __attribute__((vector_size(32)));
typedef int v8i __attribute__((vector_size(32)));

// The helpers are macros (GNU statement expressions), not inline functions: Clang refuses to pass a 256-bit vector
// by value in the baseline clone, where it is not a register type, even to a function that is always inlined.
/// All lanes s (a broadcast: vbroadcastss where the ISA has it).
#define SPLAT(s) ({ float b_ = (float)(s); (v8f){b_, b_, b_, b_, b_, b_, b_, b_}; })
#define LOAD(p) ({ v8f l_; memcpy(&l_, (p), sizeof l_); l_; })
#define STORE(p, v) do { v8f s_ = (v); memcpy((p), &s_, sizeof s_); } while (0)

/// bfloat16 bits to float32 (exact): the bits are the high half of the float's.
static inline float bf16_to_float(unsigned short b) { unsigned u = (unsigned)b << 16; float f; memcpy(&f, &u, sizeof f); return f; }
typedef unsigned short v8u16 __attribute__((vector_size(16)));
/// Eight bfloat16 values widened to float32 (exact).
#define LOAD_BF16(p) ({ v8u16 lb_; memcpy(&lb_, (p), sizeof lb_); (v8f)(__builtin_convertvector(lb_, v8i) << 16); })

typedef unsigned v8u __attribute__((vector_size(32)));
/// v rounded to bfloat16 as float32 (nearest even, NaN kept NaN, quiet; the low 16 bits zero): ck_round_bf16 on 8 lanes.
#define ROUND_BF16(v) ({ v8f rv_ = (v); v8u ru_; memcpy(&ru_, &rv_, sizeof ru_); \
    v8u rn_ = (v8u)((ru_ & 0x7fffffffu) > 0x7f800000u); \
    ru_ = (rn_ & ((ru_ | 0x400000u) & 0xffff0000u)) | (~rn_ & ((ru_ + 0x7fffu + ((ru_ >> 16) & 1u)) & 0xffff0000u)); \
    memcpy(&rv_, &ru_, sizeof rv_); rv_; })
/// Eight float32 values with zero low halves (ROUND_BF16's) stored as bfloat16 (their high halves).
#define STORE_BF16(p, v) do { v8f sv_ = (v); v8u su_; memcpy(&su_, &sv_, sizeof su_); \
    v8u16 sb_ = __builtin_convertvector(su_ >> 16, v8u16); memcpy((p), &sb_, sizeof sb_); } while (0)

#endif
