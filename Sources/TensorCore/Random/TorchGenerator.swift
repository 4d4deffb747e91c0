// Reproduces PyTorch's CPU random generator bit for bit:
//  - at::mt19937 (aten/src/ATen/core/MT19937RNGEngine.h) and CPUGeneratorImpl
//    (aten/src/ATen/CPUGeneratorImpl.cpp: seeding, random()/random64(), normal caches, get_state/set_state layout),
//  - torch.rand: uniform_kernel (aten/src/ATen/native/cpu/DistributionTemplates.h) with
//    transformation::uniform_real (aten/src/ATen/core/TransformationHelper.h),
//  - torch.randn: normal_kernel / normal_fill / NormalFill16 (DistributionTemplates.h), including the AVX2
//    variant built on log256_ps / sincos256_ps (aten/src/ATen/native/cpu/avx_mathfun.h), and the scalar
//    at::normal_distribution<double> path (aten/src/ATen/core/DistributionsHelper.h) for tensors of < 16 elements,
//  - torch.randint: random_from_to_kernel with uniform_int_from_to_distribution.
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#elseif canImport(ucrt)
import ucrt
#endif

/// A source of random tensors with torch's float32 semantics.
public protocol RandomSource: AnyObject {
    /// Like `torch.randn(count, dtype=torch.float32, generator=g)`.
    func normal(count: Int) -> [Float]
    /// Like `torch.rand(count, dtype=torch.float32, generator=g)`.
    func uniform(count: Int) -> [Float]
}

/// `torch.Generator("cpu").manual_seed(seed)` re-implemented in Swift.
public final class TorchGenerator: RandomSource {
    /// Which CPU kernel torch runs for `randn` on tensors of >= 16 elements.
    /// - `avx2`: x86-64 builds on CPUs with AVX2 (AVX512 machines use it too: normal_stub has no AVX512 kernel);
    ///   Box-Muller with the cephes polynomial log/sincos of avx_mathfun.h. Bit-exact everywhere.
    /// - `scalar`: the portable NormalFill16 (ARM / Apple silicon, or `ATEN_CPU_CAPABILITY=default`), using the C
    ///   library's logf/cosf/sinf; bit-exact when the platform libm matches (glibc does).
    public enum NormalKernel: String, Codable, Sendable { case avx2, scalar }

    static let stateN = 624
    static let stateM = 397
    /// sizeof(at::detail::CPUGeneratorImplState) on 64-bit platforms, the size of `torch.Generator.get_state()`.
    public static let stateByteCount = 5056

    public var normalKernel: NormalKernel
    private var mt = [UInt32](repeating: 0, count: 624)
    private var left: Int32 = 1
    private var nextIndex: UInt32 = 0
    private var seedValue: UInt64 = 0
    private var nextFloatNormal: Float?
    private var nextDoubleNormal: Double?

    public init(seed: UInt64 = 67280421310721, normalKernel: NormalKernel = .avx2) {
        self.normalKernel = normalKernel
        manualSeed(seed)
    }

    /// Restores a generator from bytes produced by `state` or by `torch.Generator.get_state().numpy().tobytes()`.
    public convenience init(state: [UInt8], normalKernel: NormalKernel = .avx2) throws {
        self.init(seed: 0, normalKernel: normalKernel)
        try setState(state)
    }

    /// `generator.manual_seed(seed)`: resets the engine (only the low 32 bits seed mt19937) and the normal caches.
    public func manualSeed(_ seed: UInt64) {
        nextFloatNormal = nil
        nextDoubleNormal = nil
        seedValue = seed
        mt[0] = UInt32(truncatingIfNeeded: seed)
        for j in 1..<Self.stateN {
            let prev = mt[j - 1]
            mt[j] = 1812433253 &* (prev ^ (prev >> 30)) &+ UInt32(j)
        }
        left = 1
        nextIndex = 0
    }

    /// `generator.initial_seed()`.
    public var initialSeed: UInt64 { seedValue }

    // MARK: - Engine

    private func nextState() {
        left = Int32(Self.stateN)
        nextIndex = 0
        @inline(__always) func twist(_ u: UInt32, _ v: UInt32) -> UInt32 {
            (((u & 0x8000_0000) | (v & 0x7fff_ffff)) >> 1) ^ ((v & 1) != 0 ? 0x9908_b0df : 0)
        }
        let n = Self.stateN, m = Self.stateM
        for k in 0..<(n - m) { mt[k] = mt[k + m] ^ twist(mt[k], mt[k + 1]) }
        for k in (n - m)..<(n - 1) { mt[k] = mt[k + m - n] ^ twist(mt[k], mt[k + 1]) }
        mt[n - 1] = mt[m - 1] ^ twist(mt[n - 1], mt[0])
    }

    /// CPUGeneratorImpl::random(): one tempered mt19937 output.
    public func nextUInt32() -> UInt32 {
        left -= 1
        if left == 0 { nextState() }
        var y = mt[Int(nextIndex)]
        nextIndex += 1
        y ^= y >> 11
        y ^= (y << 7) & 0x9d2c_5680
        y ^= (y << 15) & 0xefc6_0000
        y ^= y >> 18
        return y
    }

    /// CPUGeneratorImpl::random64(): first draw in the high half.
    public func nextUInt64() -> UInt64 {
        let hi = UInt64(nextUInt32())
        let lo = UInt64(nextUInt32())
        return (hi << 32) | lo
    }

    @inline(__always) private func uniformFloat() -> Float {
        Float(nextUInt32() & 0x00ff_ffff) * (1.0 / 16_777_216.0)
    }

    @inline(__always) private func uniformDouble() -> Double {
        Double(nextUInt64() & 0x001f_ffff_ffff_ffff) * (1.0 / 9_007_199_254_740_992.0)
    }

    // MARK: - Distributions

    /// torch.rand(count) for float32.
    public func uniform(count: Int) -> [Float] {
        guard count > 0 else { return [] }
        var out = [Float](repeating: 0, count: count)
        for i in 0..<count { out[i] = uniformFloat() }
        return out
    }

    /// torch.randn(count) for float32 (contiguous tensor of `count` elements, any shape).
    public func normal(count: Int) -> [Float] {
        guard count > 0 else { return [] }
        if count < 16 {
            var out = [Float](repeating: 0, count: count)
            for i in 0..<count { out[i] = Float(normalDouble()) }
            return out
        }
        var data = [Float](repeating: 0, count: count)
        for i in 0..<count { data[i] = uniformFloat() }
        data.withUnsafeMutableBufferPointer { buf in
            guard let base = buf.baseAddress else { return }
            var i = 0
            while i < count - 15 {
                fill16(base + i)
                i += 16
            }
            if count % 16 != 0 {
                let tail = base + (count - 16)
                for j in 0..<16 { tail[j] = uniformFloat() }
                fill16(tail)
            }
        }
        return data
    }

    /// at::normal_distribution<double>(0, 1) with the generator's cached second Box-Muller sample.
    public func normalDouble() -> Double {
        if let cached = nextDoubleNormal {
            nextDoubleNormal = nil
            return cached
        }
        let u1 = uniformDouble()
        let u2 = uniformDouble()
        let r = (-2.0 * log1p(-u2)).squareRoot()
        let theta = 2.0 * Double.pi * u1
        nextDoubleNormal = r * sin(theta)
        return r * cos(theta)
    }

    /// torch.randint(low, high, (count,)) (int64): `(draw % range) + low`, 64-bit draws when range >= 2^28.
    public func randomInt(low: Int64 = 0, upperBound high: Int64, count: Int) throws -> [Int64] {
        guard high > low else { throw TorchGeneratorError.invalidRange("randint needs low < high, got [\(low), \(high))") }
        let range = UInt64(bitPattern: high &- low)
        var out = [Int64](repeating: 0, count: max(count, 0))
        for i in 0..<out.count {
            let v: UInt64 = range >= (1 << 28) ? nextUInt64() : UInt64(nextUInt32())
            out[i] = Int64(bitPattern: v % range) &+ low
        }
        return out
    }

    private func fill16(_ p: UnsafeMutablePointer<Float>) {
        switch normalKernel {
        case .avx2:
            for j in 0..<8 {
                let u1: Float = 1 - p[j]
                let u2 = p[j + 8]
                let radius = (Float(-2) * Self.cephesLog(u1)).squareRoot()
                let theta = Self.twoPi * u2
                let (s, c) = Self.cephesSinCos(theta)
                p[j] = radius * c + 0
                p[j + 8] = radius * s + 0
            }
        case .scalar:
            for j in 0..<8 {
                let u1: Float = 1 - p[j]
                let u2 = p[j + 8]
                let radius = (Float(-2) * logf(u1)).squareRoot()
                let theta = Float(2.0 * Double.pi * Double(u2))  // 2.0f * pi<double> * u2, in double
                p[j] = radius * cosf(theta) + 0
                p[j + 8] = radius * sinf(theta) + 0
            }
        }
    }

    // MARK: - avx_mathfun.h, lane by lane
    // torch's AVX2 kernels are built by GCC with -mfma and its default -ffp-contract=fast, which fuses each
    // multiply feeding an add into one FMA (for `a*b + c*d` the product computed first). The fused operations
    // below reproduce that; verified bit-exact against torch 2.15 on 4M samples (tools/fixtures/rng.py covers 2x16384).

    static let twoPi = Float(2.0 * Double.pi)

    static func cephesLog(_ input: Float) -> Float {
        if !(input > 0) { return .nan }
        var x = max(input, Float.leastNormalMagnitude)
        var imm0 = Int32(bitPattern: x.bitPattern >> 23)
        x = Float(bitPattern: (x.bitPattern & ~0x7f80_0000) | Float(0.5).bitPattern)
        imm0 -= 0x7f
        var e = Float(imm0) + 1
        let mask = x < Float(0.707106781186547524)
        let tmp0: Float = mask ? x : 0
        x = x - 1
        e = e - (mask ? 1 : 0)
        x = x + tmp0
        let z = x * x
        var y = Float(7.0376836292E-2)
        for p: Float in [-1.1514610310E-1, 1.1676998740E-1, -1.2420140846E-1, 1.4249322787E-1,
                         -1.6668057665E-1, 2.0000714765E-1, -2.4999993993E-1, 3.3333331174E-1] {
            y = p.addingProduct(y, x)
        }
        y = y * x
        y = (e * Float(-2.12194440e-4)).addingProduct(y, z)   // y*z + e*q1, the first product fused
        y = y.addingProduct(-z, Float(0.5))
        x = x + y
        x = x.addingProduct(e, Float(0.693359375))
        return x
    }

    static func cephesSinCos(_ input: Float) -> (sin: Float, cos: Float) {
        var signSin = input.bitPattern & 0x8000_0000
        var x = Float(bitPattern: input.bitPattern & 0x7fff_ffff)
        var y = x * Float(1.27323954473516)
        var imm2 = Int32(truncatingIfNeeded: cvtt(y))
        imm2 = (imm2 &+ 1) & ~1
        y = Float(imm2)
        let swapSignSin = UInt32(bitPattern: (imm2 & 4) << 29)
        let polyMask = (imm2 & 2) == 0
        x = x.addingProduct(y, Float(-0.78515625))
        x = x.addingProduct(y, Float(-2.4187564849853515625e-4))
        x = x.addingProduct(y, Float(-3.77489497744594108e-8))
        let imm4 = UInt32(bitPattern: (~(imm2 &- 2) & 4) << 29)
        signSin ^= swapSignSin
        let z = x * x
        var yc = Float(2.443315711809948E-005)
        yc = Float(-1.388731625493765E-003).addingProduct(yc, z)
        yc = Float(4.166664568298827E-002).addingProduct(yc, z)
        yc = yc * z
        yc = (-(z * Float(0.5))).addingProduct(yc, z)  // yc*z - z*0.5, the first product fused
        yc = yc + 1
        var ys = Float(-1.9515295891E-4)
        ys = Float(8.3321608736E-3).addingProduct(ys, z)
        ys = Float(-1.6666654611E-1).addingProduct(ys, z)
        ys = ys * z
        ys = x.addingProduct(ys, x)
        let ysin2: Float = polyMask ? ys : 0
        let ysin1: Float = polyMask ? 0 : yc
        ys = ys - ysin2
        yc = yc - ysin1
        let s = ysin1 + ysin2
        let c = yc + ys
        return (Float(bitPattern: s.bitPattern ^ signSin), Float(bitPattern: c.bitPattern ^ imm4))
    }

    /// _mm256_cvttps_epi32: truncation, 0x80000000 for out-of-range or NaN.
    @inline(__always) static func cvtt(_ v: Float) -> Int32 {
        guard v.isFinite, v > -2_147_483_904, v < 2_147_483_648 else { return Int32.min }
        return Int32(v)
    }

    // MARK: - State (torch.Generator.get_state() byte layout)

    /// The generator state in the layout of `torch.Generator.get_state()` (a 5056-byte CPUGeneratorImplState),
    /// so states can be exchanged with PyTorch.
    public var state: [UInt8] {
        var b = [UInt8](repeating: 0, count: Self.stateByteCount)
        func put<T: FixedWidthInteger>(_ v: T, _ at: Int) {
            withUnsafeBytes(of: v.littleEndian) { for (k, byte) in $0.enumerated() { b[at + k] = byte } }
        }
        put(seedValue, 0)
        put(left, 8)
        put(Int32(1), 12)
        put(UInt64(nextIndex), 16)
        for k in 0..<Self.stateN { put(UInt64(mt[k]), 24 + 8 * k) }
        // 5016 normal_x, 5024 normal_y, 5032 normal_rho, 5040 normal_is_valid, 5048 float sample, 5052 valid flag
        if let d = nextDoubleNormal {
            put(d.bitPattern, 5024)
            put(Int32(1), 5040)
        }
        if let f = nextFloatNormal {
            put(f.bitPattern, 5048)
            b[5052] = 1
        }
        return b
    }

    /// Restores a state from `state` or `torch.Generator.get_state()`; throws on a malformed buffer.
    public func setState(_ b: [UInt8]) throws {
        guard b.count == Self.stateByteCount else {
            throw TorchGeneratorError.invalidStateSize(expected: Self.stateByteCount, found: b.count)
        }
        func get<T: FixedWidthInteger>(_ type: T.Type, _ at: Int) -> T {
            var v: T = 0
            for k in 0..<MemoryLayout<T>.size { v |= T(truncatingIfNeeded: b[at + k]) << (8 * k) }
            return v
        }
        let newLeft = get(Int32.self, 8), seeded = get(Int32.self, 12), newNext = get(UInt64.self, 16)
        guard seeded != 0, newLeft > 0, newLeft <= Int32(Self.stateN), newNext <= UInt64(Self.stateN) else {
            throw TorchGeneratorError.invalidEngineState("seeded=\(seeded) left=\(newLeft) next=\(newNext)")
        }
        seedValue = get(UInt64.self, 0)
        left = newLeft
        nextIndex = UInt32(newNext)
        for k in 0..<Self.stateN { mt[k] = UInt32(truncatingIfNeeded: get(UInt64.self, 24 + 8 * k)) }
        nextDoubleNormal = get(Int32.self, 5040) != 0 ? Double(bitPattern: get(UInt64.self, 5024)) : nil
        nextFloatNormal = b[5052] != 0 ? Float(bitPattern: get(UInt32.self, 5048)) : nil
    }
}
