// Run-time CPU feature detection: CPUID (Intel SDM vol. 2A, "CPUID"; AMD APM vol. 3, appendix E), XGETBV for the
// register state the OS saves (Intel SDM vol. 1, 13.3 "Enabling the XSAVE feature set"), and for AMX Linux's
// arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) (Documentation/arch/x86/xstate.rst). The ISA level in use is
// the detected one, lowered by the LDM_ISA environment variable; when LDM_ISA is set, oneDNN's own limit
// (ONEDNN_MAX_CPU_ISA, read by oneDNN on its first use) is set to the same level here, at load time.
#include "ckernels.h"
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__)
#include <cpuid.h>
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

static void cpuid(unsigned leaf, unsigned sub, unsigned r[4]) { __cpuid_count(leaf, sub, r[0], r[1], r[2], r[3]); }

static unsigned long long xgetbv0(void) {
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((unsigned long long)hi << 32) | lo;
}
#endif

static ck_cpu_features features;
static ck_isa detected = CK_ISA_BASELINE, active = CK_ISA_BASELINE;
static int clamped;
static char invalid_override[64];

static void detect(ck_cpu_features *f) {
    memset(f, 0, sizeof *f);
#if defined(__x86_64__)
    unsigned r[4];
    cpuid(0, 0, r);
    const unsigned max_leaf = r[0];
    memcpy(f->vendor, &r[1], 4); memcpy(f->vendor + 4, &r[3], 4); memcpy(f->vendor + 8, &r[2], 4);
    cpuid(0x80000000u, 0, r);
    if (r[0] >= 0x80000004u) {
        for (unsigned i = 0; i < 3; i++) { cpuid(0x80000002u + i, 0, r); memcpy(f->brand + 16 * i, r, 16); }
        // Trim the padding some CPUs put around the brand string.
        char *b = f->brand; while (*b == ' ') b++;
        memmove(f->brand, b, strlen(b) + 1);
        for (long n = (long)strlen(f->brand); n > 0 && f->brand[n - 1] == ' '; n--) f->brand[n - 1] = 0;
    }
    cpuid(1, 0, r);
    const unsigned ecx1 = r[2];
    f->sse41 = (ecx1 >> 19) & 1;
    const int osxsave = (ecx1 >> 27) & 1;
    unsigned long long xcr0 = osxsave ? xgetbv0() : 0;
    f->os_ymm = (xcr0 & 0x6) == 0x6;                  // SSE + AVX state
    f->os_zmm = f->os_ymm && (xcr0 & 0xe0) == 0xe0;   // opmask, ZMM_Hi256, Hi16_ZMM
    f->os_tiles = (xcr0 & 0x60000) == 0x60000;        // XTILECFG, XTILEDATA
    f->avx = f->os_ymm && ((ecx1 >> 28) & 1);
    f->fma = f->avx && ((ecx1 >> 12) & 1);
    f->f16c = f->avx && ((ecx1 >> 29) & 1);
    if (max_leaf >= 7) {
        cpuid(7, 0, r);
        const unsigned ebx = r[1], ecx = r[2], edx = r[3], max_sub = r[0];
        f->avx2 = f->avx && ((ebx >> 5) & 1);
        f->bmi2 = (ebx >> 8) & 1;
        f->avx512f = f->os_zmm && ((ebx >> 16) & 1);
        f->avx512dq = f->avx512f && ((ebx >> 17) & 1);
        f->avx512cd = f->avx512f && ((ebx >> 28) & 1);
        f->avx512bw = f->avx512f && ((ebx >> 30) & 1);
        f->avx512vl = f->avx512f && ((ebx >> 31) & 1);
        f->avx512_vnni = f->avx512f && ((ecx >> 11) & 1);
        f->amx_bf16 = f->os_tiles && ((edx >> 22) & 1);
        f->amx_tile = f->os_tiles && ((edx >> 24) & 1);
        f->amx_int8 = f->os_tiles && ((edx >> 25) & 1);
        if (max_sub >= 1) {
            cpuid(7, 1, r);
            f->avx_vnni = f->avx && ((r[0] >> 4) & 1);
            f->avx512_bf16 = f->avx512f && ((r[0] >> 5) & 1);
        }
    }
#if defined(__linux__)
    if (f->amx_tile) {
        // ARCH_REQ_XCOMP_PERM (0x1023) for XFEATURE_XTILEDATA (18): without it the first tile instruction faults.
        f->amx_permitted = syscall(SYS_arch_prctl, 0x1023, 18) == 0;
    }
#endif
#endif
}

static const char *names[] = {"baseline", "avx2", "avx512", "avx512_bf16", "amx"};
const char *ck_isa_name(ck_isa isa) { return (unsigned)isa <= CK_ISA_AMX ? names[isa] : "?"; }

static ck_isa level_of(const ck_cpu_features *f) {
    if (!(f->avx2 && f->fma && f->f16c && f->bmi2)) return CK_ISA_BASELINE;
    if (!(f->avx512f && f->avx512bw && f->avx512vl && f->avx512dq && f->avx512cd)) return CK_ISA_AVX2;
    if (f->amx_tile && f->amx_bf16 && f->amx_permitted && f->avx512_bf16) return CK_ISA_AMX;
    if (f->avx512_bf16) return CK_ISA_AVX512_BF16;
    return CK_ISA_AVX512;
}

/// Sets oneDNN's ISA limit to `isa` (only when LDM_ISA lowers it; oneDNN reads this once, on its first use).
static void limit_onednn(ck_isa isa) {
    static const char *onednn[] = {"SSE41", "AVX2", "AVX512_CORE_VNNI", "AVX512_CORE_BF16", "AVX512_CORE_AMX"};
    setenv("ONEDNN_MAX_CPU_ISA", onednn[isa], 1);
    setenv("DNNL_MAX_CPU_ISA", onednn[isa], 1);
}

void ck_kernels_select(ck_isa isa); // isa_dispatch.c

__attribute__((constructor(101))) static void ck_cpu_init(void) {
    detect(&features);
    detected = active = level_of(&features);
    const char *env = getenv("LDM_ISA");
    if (env && *env) {
        int found = -1;
        for (int i = 0; i <= CK_ISA_AMX; i++) if (strcmp(env, names[i]) == 0) found = i;
        if (found < 0) {
            strncpy(invalid_override, env, sizeof invalid_override - 1);
        } else {
            clamped = found > (int)detected;
            active = clamped ? detected : (ck_isa)found;
            limit_onednn(active);
        }
    }
    ck_kernels_select(active);
}

const ck_cpu_features *ck_cpu(void) { return &features; }
ck_isa ck_isa_detected(void) { return detected; }
ck_isa ck_isa_active(void) { return active; }
const char *ck_isa_invalid_override(void) { return invalid_override[0] ? invalid_override : 0; }
int ck_isa_clamped(void) { return clamped; }
