// Views and layout ops (torch.Tensor.view/reshape/permute/transpose/narrow/expand/contiguous), each with its backward.
import CKernels

/// Visits a strided N-d layout as (outer offset pairs) x (inner run): calls `body(dstOffset, srcOffset)` for each
/// row of the last dimension. Used by every copy that follows strides.
@inline(__always)
func forEachRow(shape: [Int], dstStrides: [Int], srcStrides: [Int], _ body: (Int, Int) -> Void) {
    let rank = shape.count
    if rank <= 1 {
        body(0, 0)
        return
    }
    let outer = shape[0..<(rank - 1)].reduce(1, *)
    var idx = [Int](repeating: 0, count: rank - 1)
    var d = 0, s = 0
    for _ in 0..<outer {
        body(d, s)
        var k = rank - 2
        while k >= 0 {
            idx[k] += 1
            d += dstStrides[k]
            s += srcStrides[k]
            if idx[k] < shape[k] { break }
            d -= dstStrides[k] * shape[k]
            s -= srcStrides[k] * shape[k]
            idx[k] = 0
            k -= 1
        }
    }
}

/// Copies `shape` elements from a strided float32 source into a strided float32 destination.
func stridedCopy(_ dst: UnsafeMutablePointer<Float>, _ dstStrides: [Int], _ src: UnsafePointer<Float>, _ srcStrides: [Int], _ shape: [Int]) {
    if shape.isEmpty {
        dst.pointee = src.pointee
        return
    }
    let n = shape.last!, ds = dstStrides.last!, ss = srcStrides.last!
    // Parallelise over the first axis when it is large enough.
    let work = { (d0: UnsafeMutablePointer<Float>, s0: UnsafePointer<Float>, shp: [Int], dS: [Int], sS: [Int]) in
        forEachRow(shape: shp, dstStrides: dS, srcStrides: sS) { d, s in
            let dp = d0 + d, sp = s0 + s
            if ds == 1 && ss == 1 { dp.update(from: sp, count: n) }
            else { for i in 0..<n { dp[i * ds] = sp[i * ss] } }
        }
    }
    if shape.count >= 2 && shape[0] > 1 {
        let inner = Array(shape.dropFirst()), dS = Array(dstStrides.dropFirst()), sS = Array(srcStrides.dropFirst())
        Parallel.forEach(shape[0], costPerItem: inner.reduce(1, *)) { i in
            work(dst + i * dstStrides[0], src + i * srcStrides[0], inner, dS, sS)
        }
    } else { work(dst, src, shape, dstStrides, srcStrides) }
}

extension Tensor {
    /// A view with new shape/strides over the same storage, recorded for autograd with `backward`.
    func view(shape: [Int], strides: [Int], offset: Int, _ name: String, _ backward: @escaping (Tensor) -> Tensor) -> Tensor {
        Tensor(storage: storage, shape: shape, strides: strides, offset: offset, dtype: dtype)
            .recorded(name, [self]) { [backward] g in [backward(g)] }
    }

    public func contiguous() -> Tensor {
        if isContiguous { return self }
        return OpTimes.measure("copy (contiguous)") { contiguousCopy() }
    }

    private func contiguousCopy() -> Tensor {
        if dtype != .float32 { return float32().contiguous() }
        let out = Tensor.empty(shape)
        stridedCopy(out.data, out.strides, data, strides, shape)
        return out.recorded("contiguous", [self]) { g in [g] }
    }

    /// Converts to float32 (a no-op for float32 tensors). Gradients flow through unchanged.
    public func float32() -> Tensor {
        if dtype == .float32 { return self }
        return OpTimes.measure("widen to float32") { widened() }
    }

    private func widened() -> Tensor {
        let out = Tensor.empty(shape)
        let src = storage.base.assumingMemoryBound(to: UInt16.self) + offset
        let dst = out.data, n = shape.last ?? 1, ss = strides.last ?? 1
        let isBF16 = dtype == .bfloat16
        if isContiguous {
            // Weights held in 16 bits are widened per call (float32 compute on a bf16/f16 file): flat, vectorised.
            let total = count
            withExtendedLifetime(self) { Parallel.forRange(total, costPerItem: 1) { r in widen16(src + r.lowerBound, dst + r.lowerBound, r.count, bf16: isBF16) } }
            return out.recorded("float32", [self]) { g in [g] }
        }
        forEachRow(shape: shape.isEmpty ? [1] : shape, dstStrides: out.strides.isEmpty ? [1] : out.strides, srcStrides: strides.isEmpty ? [1] : strides) { d, s in
            for i in 0..<n {
                let bits = src[s + i * ss]
                dst[d + i] = isBF16 ? floatFromBF16(bits) : Float(Float16(bitPattern: bits))
            }
        }
        return out.recorded("float32", [self]) { g in [g] }
    }

    /// float16 -> bfloat16 (rounded to nearest even from the exact float32 value) through a small float32 buffer per
    /// block, so that no float32 copy of the whole tensor exists (an f16 file's weights held in bf16 at load).
    private func halfToBFloat16() -> Tensor {
        let n = count, block = 4096
        let out = Tensor(storage: Storage(byteCount: n * 2), shape: shape, dtype: .bfloat16)
        let s = storage.base.assumingMemoryBound(to: UInt16.self) + offset, d = out.storage.base.assumingMemoryBound(to: UInt16.self)
        withExtendedLifetime(self) {
            Parallel.forRange((n + block - 1) / block, costPerItem: block) { r in
                let tmp = UnsafeMutablePointer<Float>.allocate(capacity: block)
                defer { tmp.deallocate() }
                for b in r {
                    let lo = b * block, m = Swift.min(block, n - lo)
                    widen16(s + lo, tmp, m, bf16: false)
                    ck_to_bf16(tmp, d + lo, m)
                }
            }
        }
        return out
    }

    /// Converts to `dtype` (contiguous result). bfloat16 rounds to nearest even as torch does.
    public func to(_ target: DType) -> Tensor {
        if target == dtype { return self }
        if target == .bfloat16 && dtype == .float16 && isContiguous { return halfToBFloat16() }
        let src = float32().contiguous()
        if target == .float32 { return src }
        let out = Tensor(storage: Storage(byteCount: count * 2), shape: shape, dtype: target)
        let d = out.storage.base.assumingMemoryBound(to: UInt16.self), s = src.data
        if target == .bfloat16 {
            withExtendedLifetime(src) { Parallel.forRange(count, costPerItem: 2) { r in ck_to_bf16(s + r.lowerBound, d + r.lowerBound, r.count) } }
        } else {
            for i in 0..<count { d[i] = Float16(s[i]).bitPattern }
        }
        return out
    }

    public func reshaped(_ newShape: [Int]) -> Tensor {
        var shp = newShape
        if let i = shp.firstIndex(of: -1) {
            let known = shp.enumerated().filter { $0.offset != i }.map(\.element).reduce(1, *)
            shp[i] = known == 0 ? 0 : count / known
        }
        precondition(shp.reduce(1, *) == count, "reshape: cannot view \(shape) as \(newShape)")
        if shp == shape { return self }
        let base = isContiguous ? self : contiguous()
        let inShape = shape
        return base.view(shape: shp, strides: Tensor.contiguousStrides(shp), offset: base.offset, "reshape") { g in g.reshaped(inShape) }
    }
    public func flattened(from axis: Int = 0) -> Tensor {
        let a = normalize(axis)
        return reshaped(Array(shape[..<a]) + [shape[a...].reduce(1, *)])
    }

    public func permuted(_ order: [Int]) -> Tensor {
        precondition(order.sorted() == Array(0..<rank), "permute: \(order) is not a permutation of \(rank) axes")
        var inverse = [Int](repeating: 0, count: rank)
        for (i, o) in order.enumerated() { inverse[o] = i }
        return view(shape: order.map { shape[$0] }, strides: order.map { strides[$0] }, offset: offset, "permute") { g in g.permuted(inverse) }
    }
    public func transposed(_ a: Int = -2, _ b: Int = -1) -> Tensor {
        var order = Array(0..<rank)
        order.swapAt(normalize(a), normalize(b))
        return permuted(order)
    }

    /// torch.narrow: `length` elements of `axis` starting at `start`.
    public func narrow(_ axis: Int, _ start: Int, _ length: Int) -> Tensor {
        let a = normalize(axis)
        precondition(start >= 0 && length >= 0 && start + length <= shape[a], "narrow: [\(start), \(start + length)) outside axis \(a) of \(shape)")
        var shp = shape
        shp[a] = length
        let inShape = shape
        return view(shape: shp, strides: strides, offset: offset + start * strides[a], "narrow") { g in
            let full = Tensor(zeros: inShape)
            full.narrowedRaw(a, start, length).assign(g)
            return full
        }
    }
    /// narrow without autograd (for kernels writing into a slice of a buffer).
    func narrowedRaw(_ a: Int, _ start: Int, _ length: Int) -> Tensor {
        var shp = shape
        shp[a] = length
        return Tensor(storage: storage, shape: shp, strides: strides, offset: offset + start * strides[a], dtype: dtype)
    }
    /// Copies values of `src` (broadcast to self's shape) into self's storage; no autograd (an in-place write).
    public func assign(_ src: Tensor) {
        let s = src.float32().broadcasted(to: shape, recording: false)
        withExtendedLifetime(s) { stridedCopy(data, strides, s.data, s.strides, shape) }
        bumpVersion()
    }

    public func unsqueezed(_ axis: Int) -> Tensor {
        let a = axis < 0 ? axis + rank + 1 : axis
        var shp = shape
        shp.insert(1, at: a)
        return reshaped(shp)
    }
    public func squeezed(_ axis: Int) -> Tensor {
        let a = normalize(axis)
        precondition(shape[a] == 1, "squeeze: axis \(a) of \(shape) is not 1")
        var shp = shape
        shp.remove(at: a)
        return reshaped(shp)
    }

    /// torch.expand: broadcast to `target` with stride-0 axes. Its backward sums over the broadcast axes.
    public func expanded(to target: [Int]) -> Tensor { broadcasted(to: target, recording: true) }

    func broadcasted(to target: [Int], recording: Bool) -> Tensor {
        if target == shape { return self }
        precondition(target.count >= rank, "expand: \(shape) -> \(target)")
        let lead = target.count - rank
        var st = [Int](repeating: 0, count: target.count)
        for i in 0..<rank {
            precondition(shape[i] == target[lead + i] || shape[i] == 1, "expand: cannot broadcast \(shape) to \(target)")
            st[lead + i] = shape[i] == 1 && target[lead + i] != 1 ? 0 : strides[i]
        }
        let inShape = shape
        let v = Tensor(storage: storage, shape: target, strides: st, offset: offset, dtype: dtype)
        return recording ? v.recorded("expand", [self]) { g in [g.sum(toShape: inShape)] } : v
    }
}

/// The shape two operands broadcast to (NumPy/PyTorch rules).
public func broadcastShape(_ a: [Int], _ b: [Int]) -> [Int] {
    let n = max(a.count, b.count)
    return (0..<n).map { i in
        let x = i < n - a.count ? 1 : a[i - (n - a.count)]
        let y = i < n - b.count ? 1 : b[i - (n - b.count)]
        precondition(x == y || x == 1 || y == 1, "broadcast: incompatible shapes \(a) and \(b)")
        return max(x, y)
    }
}

/// float32 values of `n` bfloat16 or IEEE half values (exact), eight at a time in integer SIMD lanes (the half
/// conversion of `Float(Float16)` is a library call per element on x86 without F16C code generation).
func widen16(_ src: UnsafePointer<UInt16>, _ dst: UnsafeMutablePointer<Float>, _ n: Int, bf16: Bool) {
    var i = 0
    let raw = UnsafeMutableRawPointer(dst)
    if bf16 {
        while i + 8 <= n {
            let h = UnsafeRawPointer(src + i).loadUnaligned(as: SIMD8<UInt16>.self)
            raw.storeBytes(of: SIMD8<UInt32>(truncatingIfNeeded: h) &<< 16, toByteOffset: i * 4, as: SIMD8<UInt32>.self)
            i += 8
        }
        while i < n {
            dst[i] = floatFromBF16(src[i])
            i += 1
        }
        return
    }
    // Half -> single: shift exponent and mantissa into place and rebias the exponent (+112); infinities and NaNs get
    // the rest of the bias (+112 more); subnormals are renormalised by one float subtraction of 2^-14.
    let magic = SIMD8<Float>(repeating: Float(bitPattern: 113 << 23))
    while i + 8 <= n {
        let h = SIMD8<UInt32>(truncatingIfNeeded: UnsafeRawPointer(src + i).loadUnaligned(as: SIMD8<UInt16>.self))
        var o = (h & 0x7FFF) &<< 13
        let exp = o & (0x7C00 << 13)
        o &+= (127 - 15) << 23
        o = o.replacing(with: o &+ ((128 - 16) << 23), where: exp .== (0x7C00 << 13))
        let sub = unsafeBitCast(o &+ (1 << 23), to: SIMD8<Float>.self) - magic
        o = o.replacing(with: unsafeBitCast(sub, to: SIMD8<UInt32>.self), where: exp .== 0)
        raw.storeBytes(of: o | ((h & 0x8000) &<< 16), toByteOffset: i * 4, as: SIMD8<UInt32>.self)
        i += 8
    }
    while i < n {
        dst[i] = Float(Float16(bitPattern: src[i]))
        i += 1
    }
}
