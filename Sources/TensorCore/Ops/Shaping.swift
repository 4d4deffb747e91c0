// torch.cat / split / chunk / F.pad (constant), each with its backward.

/// torch.cat along `axis`.
public func concat(_ tensors: [Tensor], axis: Int) -> Tensor {
    precondition(!tensors.isEmpty, "concat: no tensors")
    let first = tensors[0], a = first.normalize(axis)
    for t in tensors {
        precondition(t.rank == first.rank && (0..<t.rank).allSatisfy { $0 == a || t.shape[$0] == first.shape[$0] },
                     "concat: shapes \(tensors.map(\.shape)) differ outside axis \(a)")
    }
    let sizes = tensors.map { $0.shape[a] }
    var shape = first.shape
    shape[a] = sizes.reduce(0, +)
    let out = Tensor.empty(shape)
    var start = 0
    for (t, n) in zip(tensors, sizes) {
        let dst = out.narrowedRaw(a, start, n), src = t.float32()
        withExtendedLifetime(src) { stridedCopy(dst.data, dst.strides, src.data, src.strides, dst.shape) }
        start += n
    }
    return out.recorded("cat", tensors) { g in
        var s = 0
        return sizes.map { n in
            defer { s += n }
            return g.narrow(a, s, n).contiguous()
        }
    }
}

extension Tensor {
    /// torch.split with explicit sizes (views).
    public func split(_ sizes: [Int], axis: Int) -> [Tensor] {
        let a = normalize(axis)
        precondition(sizes.reduce(0, +) == shape[a], "split: sizes \(sizes) do not add up to \(shape[a])")
        var s = 0
        return sizes.map { n in
            defer { s += n }
            return narrow(a, s, n)
        }
    }
    /// torch.chunk into `n` equal parts (the last may be smaller).
    public func chunk(_ n: Int, axis: Int) -> [Tensor] {
        let a = normalize(axis), size = (shape[a] + n - 1) / n
        var sizes: [Int] = []
        var left = shape[a]
        while left > 0 {
            sizes.append(min(size, left))
            left -= size
        }
        return split(sizes, axis: a)
    }

    /// F.pad with a constant on the last two axes: (left, right, top, bottom) as PyTorch orders them.
    public func padded2d(left: Int, right: Int, top: Int, bottom: Int, value: Float = 0) -> Tensor {
        let h = shape[rank - 2], w = shape[rank - 1]
        var shp = shape
        shp[rank - 2] = h + top + bottom
        shp[rank - 1] = w + left + right
        let out = Tensor.full(value, shp)
        let inner = out.narrowedRaw(rank - 2, top, h).narrowedRaw(rank - 1, left, w)
        let src = float32()
        withExtendedLifetime(src) { stridedCopy(inner.data, inner.strides, src.data, src.strides, shape) }
        let r = rank
        return out.recorded("pad", [self]) { g in [g.narrow(r - 2, top, h).narrow(r - 1, left, w).contiguous()] }
    }
}
