// torch.Generator("cuda").manual_seed(seed) reproduced on the CPU: the noise that the web UIs draw on NVIDIA GPUs
// (AUTOMATIC1111's default "GPU" source, diffusers with a CUDA generator; ComfyUI draws on the CPU by default).
//  - Philox4x32-10 (curand_kernel.h / curand_philox4x32_x.h): curand_init(seed, subsequence = thread index,
//    offset = the generator's philox offset) gives key (seed lo, seed hi) and counter (offset/4, 0, idx lo, idx hi);
//    each curand4 returns Philox(counter) and then increments counter.x.
//  - torch.randn on CUDA (aten/src/ATen/native/cuda/DistributionTemplates.h, Distributions.cu): normal_kernel ->
//    distribution_nullary_kernel with curand_normal4 (unroll 4); calc_execution_policy: 256 threads per block,
//    grid = min(ceil(numel/256), SMs * (maxThreadsPerSM / 256)); thread idx writes component ii of its k-th
//    curand_normal4 to element idx + k*4T + ii*T (T = 256 * grid); the generator offset advances by
//    ((numel-1) / (4T) + 1) * 4 per call.
//  - curand_normal4: Box-Muller of (x0, x1) -> (s sin v, s cos v) and of (x2, x3), u = x 2^-32 + 2^-33,
//    v = y 2^-32 2pi + 2^-33 2pi, s = sqrt(-2 ln u).
// The Box-Muller is evaluated in double and rounded to float, as AUTOMATIC1111's CPU reproduction does
// (modules/rng_philox.py, the web UI's "NV" random number generator source): the output is bit-identical to it, and
// within a few 1e-7 of a GPU (whose __sincosf is a hardware approximation that cannot be reproduced bit for bit).
// torch.rand (curand_uniform4, then 1.0 -> 0.0) is exact.
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#elseif canImport(ucrt)
import ucrt
#endif

/// `torch.Generator("cuda").manual_seed(seed)` on the CPU (see the file header for what is and is not bit-exact).
public final class CUDAGenerator: RandomSource {
    /// The two device properties torch's launch configuration reads. They only matter for tensors larger than the
    /// device's resident threads (SMs x maxThreadsPerSM, e.g. 125,952 on an RTX 3090): smaller ones are drawn one
    /// element per thread on every GPU.
    public struct Device: Equatable, Sendable {
        public var multiprocessorCount: Int
        public var maxThreadsPerMultiprocessor: Int
        public init(multiprocessorCount: Int, maxThreadsPerMultiprocessor: Int) {
            self.multiprocessorCount = multiprocessorCount
            self.maxThreadsPerMultiprocessor = maxThreadsPerMultiprocessor
        }
        /// Blocks of 256 threads resident at once (torch's grid cap); nil when the device cannot hold one block.
        var maxBlocks: Int? {
            let b = multiprocessorCount * (maxThreadsPerMultiprocessor / 256)
            return b > 0 ? b : nil
        }
    }

    public private(set) var seed: UInt64
    /// The generator's philox_offset_per_thread (a multiple of 4), as `torch.cuda` reports in `get_state()`.
    public private(set) var offset: UInt64 = 0
    /// nil: no grid cap (one element per thread, AUTOMATIC1111's "NV" generator); otherwise torch's launch on
    /// that device.
    public let device: Device?

    public init(seed: UInt64, device: Device? = nil) {
        precondition(device == nil || device?.maxBlocks != nil, "CUDAGenerator: a device needs >= 256 threads per SM and >= 1 SM")
        self.seed = seed
        self.device = device
    }

    /// `generator.manual_seed(seed)`: new key, offset 0.
    public func manualSeed(_ seed: UInt64) {
        self.seed = seed
        offset = 0
    }

    // MARK: - Philox4x32-10

    static let m0: UInt32 = 0xD251_1F53, m1: UInt32 = 0xCD9E_8D57
    static let w0: UInt32 = 0x9E37_79B9, w1: UInt32 = 0xBB67_AE85

    /// curand_Philox4x32_10(counter, key).
    public static func philox(_ c: (UInt32, UInt32, UInt32, UInt32), key: (UInt32, UInt32)) -> (UInt32, UInt32, UInt32, UInt32) {
        var (c0, c1, c2, c3) = c
        var (k0, k1) = key
        for round in 0..<10 {
            let p0 = UInt64(m0) * UInt64(c0), p1 = UInt64(m1) * UInt64(c2)
            (c0, c1, c2, c3) = (UInt32(p1 >> 32) ^ c1 ^ k0, UInt32(truncatingIfNeeded: p1),
                                UInt32(p0 >> 32) ^ c3 ^ k1, UInt32(truncatingIfNeeded: p0))
            if round < 9 {
                k0 = k0 &+ w0
                k1 = k1 &+ w1
            }
        }
        return (c0, c1, c2, c3)
    }

    // MARK: - Launch

    /// (threads in the grid, offset increment) of calc_execution_policy for `count` elements, unroll 4.
    func launch(_ count: Int) -> (threads: Int, increment: UInt64) {
        var grid = (count + 255) / 256
        if let cap = device?.maxBlocks { grid = min(grid, cap) }
        let threads = 256 * grid
        return (threads, UInt64((count - 1) / (threads * 4) + 1) * 4)
    }

    /// Runs the grid-stride kernel: `body(element, philox output, component)` for every element, then advances the
    /// offset like philox_cuda_state.
    private func run(_ count: Int, _ body: (Int, (UInt32, UInt32, UInt32, UInt32), Int) -> Void) {
        let (t, increment) = launch(count)
        let key = (UInt32(truncatingIfNeeded: seed), UInt32(truncatingIfNeeded: seed >> 32))
        let base = offset / 4
        var k = 0, start = 0
        while start < count {
            let ctr = base &+ UInt64(k)
            for idx in 0..<min(t, count - start) {
                let r = Self.philox((UInt32(truncatingIfNeeded: ctr), UInt32(truncatingIfNeeded: ctr >> 32),
                                     UInt32(truncatingIfNeeded: idx), UInt32(truncatingIfNeeded: UInt64(idx) >> 32)), key: key)
                var li = start + idx, ii = 0
                while ii < 4 && li < count {
                    body(li, r, ii)
                    li += t
                    ii += 1
                }
            }
            start += 4 * t
            k += 1
        }
        offset &+= increment
    }

    // MARK: - Distributions

    static let inv32 = Double(Float(2.3283064e-10))                                    // CURAND_2POW32_INV (2^-32)
    static let inv32TwoPi = Double(Float(2.3283064e-10 * 6.2831855 as Double))         // CURAND_2POW32_INV_2PI

    /// Box-Muller of one curand_normal4 component, in double (AUTOMATIC1111's rng_philox arithmetic).
    @inline(__always) static func normalComponent(_ r: (UInt32, UInt32, UInt32, UInt32), _ ii: Int) -> Float {
        let (a, b) = ii < 2 ? (r.0, r.1) : (r.2, r.3)
        let u = Double(a) * inv32 + inv32 / 2
        let v = Double(b) * inv32TwoPi + inv32TwoPi / 2
        let s = (-2.0 * log(u)).squareRoot()
        return Float(ii % 2 == 0 ? s * sin(v) : s * cos(v))
    }

    /// `torch.randn(count, generator=g, device="cuda")` (float32).
    public func normal(count: Int) -> [Float] {
        guard count > 0 else { return [] }
        var out = [Float](repeating: 0, count: count)
        out.withUnsafeMutableBufferPointer { p in
            run(count) { i, r, ii in p[i] = Self.normalComponent(r, ii) }
        }
        return out
    }

    /// `torch.rand(count, generator=g, device="cuda")` (float32): curand_uniform4 in (0, 1], 1 mapped to 0.
    public func uniform(count: Int) -> [Float] {
        guard count > 0 else { return [] }
        var out = [Float](repeating: 0, count: count)
        out.withUnsafeMutableBufferPointer { p in
            run(count) { i, r, ii in
                let x = ii == 0 ? r.0 : ii == 1 ? r.1 : ii == 2 ? r.2 : r.3
                let u = Float(x) * Float(2.3283064e-10) + Float(2.3283064e-10) / 2   // the product is exact
                p[i] = u == 1 ? 0 : u
            }
        }
        return out
    }
}
