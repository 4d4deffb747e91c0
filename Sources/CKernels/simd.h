// Shared by the C kernels: the ISA clones and the 8-lane float vector helpers (Clang/GCC vector extensions).
#ifndef CKERNELS_SIMD_H
#define CKERNELS_SIMD_H
#include <string.h>

// Each exported kernel is compiled for AVX-512, AVX2+FMA and baseline x86-64; the loader picks the clone.
#if defined(__x86_64__) && defined(__linux__)
#define CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CLONES
#endif

typedef float v8f __attribute__((vector_size(32)));
typedef int v8i __attribute__((vector_size(32)));

// The helpers are macros (GNU statement expressions), not inline functions: Clang refuses to pass a 256-bit vector
// by value in the baseline clone, where it is not a register type, even to a function that is always inlined.
/// All lanes s (a broadcast: vbroadcastss where the ISA has it).
#define SPLAT(s) ({ float b_ = (float)(s); (v8f){b_, b_, b_, b_, b_, b_, b_, b_}; })
#define LOAD(p) ({ v8f l_; memcpy(&l_, (p), sizeof l_); l_; })
#define STORE(p, v) do { v8f s_ = (v); memcpy((p), &s_, sizeof s_); } while (0)

#endif
