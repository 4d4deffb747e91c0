// Branch-free float32 exp/sigmoid/tanh/erf that LLVM's loop vectorizer turns into SIMD code at the baseline
// x86-64 ISA (a call to libm's expf would keep every loop scalar). exp follows Cephes' expf (Cody-Waite range
// reduction + degree-5 polynomial, about 1 ulp); erf is Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7).

@inline(__always) func fastExp(_ x: Float) -> Float {
    let x = Swift.min(Swift.max(x, -87.33654), 88.72283)
    let magic: Float = 12_582_912 // 1.5 * 2^23: adding it rounds to an integer held in the low mantissa bits
    let t = x * 1.442695041 + magic
    let n = t - magic
    let bits = Int32(bitPattern: t.bitPattern) &- 0x4B40_0000
    let r = x - n * 0.693359375 + n * 2.12194440e-4
    let r2 = r * r
    var p: Float = 1.9875691500e-4
    p = p * r + 1.3981999507e-3
    p = p * r + 8.3334519073e-3
    p = p * r + 4.1665795894e-2
    p = p * r + 1.6666665459e-1
    p = p * r + 5.0000001201e-1
    let y = p * r2 + r + 1
    // Split the power of two so that n = 128 (x near 88.7) does not overflow the exponent field.
    let half = bits >> 1
    let s1 = Float(bitPattern: UInt32(bitPattern: (half &+ 127) << 23))
    let s2 = Float(bitPattern: UInt32(bitPattern: (bits &- half &+ 127) << 23))
    return y * s1 * s2
}

@inline(__always) func fastSigmoid(_ x: Float) -> Float { 1 / (1 + fastExp(-x)) }

@inline(__always) func fastTanh(_ x: Float) -> Float {
    // Odd function evaluated on |x| to keep precision for negative inputs.
    let a = Swift.min(Swift.abs(x), 9)
    let e = fastExp(-2 * a)
    let t = (1 - e) / (1 + e)
    return x < 0 ? -t : t
}

@inline(__always) func fastErf(_ x: Float) -> Float {
    let a = Swift.abs(x)
    let t = 1 / (1 + 0.3275911 * a)
    var p: Float = 1.061405429
    p = p * t - 1.453152027
    p = p * t + 1.421413741
    p = p * t - 0.284496736
    p = p * t + 0.254829592
    let y = 1 - p * t * fastExp(-a * a)
    return x < 0 ? -y : y
}
