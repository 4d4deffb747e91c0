// Horizontal reductions with explicit SIMD accumulators: a plain `s += x[i]` loop stays scalar because float
// addition is not associative, so the vectorizer may not reorder it. Four 8-lane accumulators per pass.

@inline(__always) func vectorSum(_ p: UnsafePointer<Float>, _ n: Int) -> Float {
    var a0 = SIMD8<Float>(), a1 = SIMD8<Float>(), a2 = SIMD8<Float>(), a3 = SIMD8<Float>()
    let raw = UnsafeRawPointer(p)
    var i = 0
    while i + 32 <= n {
        a0 += raw.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<Float>.self)
        a1 += raw.loadUnaligned(fromByteOffset: (i + 8) * 4, as: SIMD8<Float>.self)
        a2 += raw.loadUnaligned(fromByteOffset: (i + 16) * 4, as: SIMD8<Float>.self)
        a3 += raw.loadUnaligned(fromByteOffset: (i + 24) * 4, as: SIMD8<Float>.self)
        i += 32
    }
    var s = ((a0 + a1) + (a2 + a3)).sum()
    while i < n {
        s += p[i]
        i += 1
    }
    return s
}

/// sum((x - mu)^2)
@inline(__always) func vectorSumSquaredDeviation(_ p: UnsafePointer<Float>, _ n: Int, _ mu: Float) -> Float {
    var a0 = SIMD8<Float>(), a1 = SIMD8<Float>()
    let m = SIMD8<Float>(repeating: mu)
    let raw = UnsafeRawPointer(p)
    var i = 0
    while i + 16 <= n {
        let d0 = raw.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<Float>.self) - m
        let d1 = raw.loadUnaligned(fromByteOffset: (i + 8) * 4, as: SIMD8<Float>.self) - m
        a0 += d0 * d0
        a1 += d1 * d1
        i += 16
    }
    var s = (a0 + a1).sum()
    while i < n {
        let d = p[i] - mu
        s += d * d
        i += 1
    }
    return s
}

@inline(__always) func vectorMax(_ p: UnsafePointer<Float>, _ n: Int) -> Float {
    var m = -Float.infinity
    var i = 0
    if n >= 8 {
        var acc = SIMD8<Float>(repeating: -.infinity)
        let raw = UnsafeRawPointer(p)
        while i + 8 <= n {
            acc = pointwiseMax(acc, raw.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<Float>.self))
            i += 8
        }
        m = acc.max()
    }
    while i < n {
        m = Swift.max(m, p[i])
        i += 1
    }
    return m
}
