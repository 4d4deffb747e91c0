import Foundation

// Reductions (torch.sum/mean/var/max/argmax along axes). Reduced axes are moved last and made contiguous, then
// each output element reduces one contiguous run; sums accumulate in Double for stability.

extension Tensor {
    /// Moves `axes` to the end; returns the contiguous tensor as (outer, inner) plus the kept shape.
    private func splitForReduction(_ axes: [Int]) -> (Tensor, outer: Int, inner: Int, kept: [Int]) {
        let ax = Set(axes.map(normalize))
        let keptAxes = (0..<rank).filter { !ax.contains($0) }
        let order = keptAxes + ax.sorted()
        let p = (order == Array(0..<rank) ? self.detach() : self.detach().permuted(order)).float32().contiguous()
        let inner = ax.map { shape[$0] }.reduce(1, *)
        return (p, p.count / Swift.max(inner, 1), inner, keptAxes.map { shape[$0] })
    }
    private func keptDims(_ axes: [Int]) -> [Int] {
        let ax = Set(axes.map(normalize))
        return shape.enumerated().map { ax.contains($0.offset) ? 1 : $0.element }
    }

    /// Sum over `axes` (all axes when nil).
    public func sum(axes: [Int]? = nil, keepDims: Bool = false) -> Tensor {
        let axes = axes ?? Array(0..<rank)
        let inShape = shape, keptShape = keptDims(axes)
        let lead = Set(axes.map(normalize)).sorted()
        if dtype == .float32, isContiguous, !lead.isEmpty, lead.count < rank, lead == Array(0..<lead.count) {
            // Leading axes of a contiguous tensor (bias gradients, batch sums): column sums in place, without the
            // transposed copy the general path makes.
            let rows = shape[0..<lead.count].reduce(1, *), cols = count / Swift.max(rows, 1)
            let out = Tensor.empty(keepDims ? keptShape : Array(shape[lead.count...]))
            let s = data, d = out.data
            withExtendedLifetime(self) {
                Parallel.forRange(cols, costPerItem: rows) { r in
                    let block = 2048
                    let acc = UnsafeMutablePointer<Double>.allocate(capacity: block)
                    defer { acc.deallocate() }
                    var j0 = r.lowerBound
                    while j0 < r.upperBound {
                        let len = Swift.min(block, r.upperBound - j0)
                        acc.update(repeating: 0, count: len)
                        for i in 0..<rows {
                            let row = s + i * cols + j0
                            for j in 0..<len { acc[j] += Double(row[j]) }
                        }
                        for j in 0..<len { d[j0 + j] = Float(acc[j]) }
                        j0 += len
                    }
                }
            }
            return out.recorded("sum", [self]) { g in [g.reshaped(keptShape).expanded(to: inShape).contiguous()] }
        }
        let (p, outer, inner, kept) = splitForReduction(axes)
        defer { withExtendedLifetime(p) {} }
        let out = Tensor.empty(keepDims ? keptDims(axes) : kept)
        let s = p.data, d = out.data
        Parallel.forEach(outer, costPerItem: inner) { o in
            // SIMD partial sums over blocks of 4096, accumulated in Double.
            var acc = 0.0, i = 0
            let row = s + o * inner
            while i < inner {
                let len = Swift.min(4096, inner - i)
                acc += Double(vectorSum(row + i, len))
                i += len
            }
            d[o] = Float(acc)
        }
        return out.recorded("sum", [self]) { g in [g.reshaped(keptShape).expanded(to: inShape).contiguous()] }
    }
    public func sum(axis: Int, keepDims: Bool = false) -> Tensor { sum(axes: [axis], keepDims: keepDims) }

    public func mean(axes: [Int]? = nil, keepDims: Bool = false) -> Tensor {
        let axes = axes ?? Array(0..<rank)
        let n = axes.map { shape[normalize($0)] }.reduce(1, *)
        return sum(axes: axes, keepDims: keepDims) * (1 / Float(Swift.max(n, 1)))
    }
    public func mean(axis: Int, keepDims: Bool = false) -> Tensor { mean(axes: [axis], keepDims: keepDims) }

    /// Variance (unbiased = Bessel's correction as torch.var's default).
    public func variance(axes: [Int]? = nil, keepDims: Bool = false, unbiased: Bool = true) -> Tensor {
        let axes = axes ?? Array(0..<rank)
        let n = axes.map { shape[normalize($0)] }.reduce(1, *)
        let centered = self - mean(axes: axes, keepDims: true)
        return centered.square().sum(axes: axes, keepDims: keepDims) * (1 / Float(Swift.max(unbiased ? n - 1 : n, 1)))
    }

    /// Sums a broadcast gradient back to `target` (the inverse of broadcasting).
    public func sum(toShape target: [Int]) -> Tensor {
        if shape == target { return self }
        let lead = rank - target.count
        var axes = Array(0..<lead)
        for (i, n) in target.enumerated() where n == 1 && shape[lead + i] != 1 { axes.append(lead + i) }
        let s = axes.isEmpty ? self : sum(axes: axes, keepDims: true)
        return s.reshaped(target)
    }

    /// Maximum along `axis`; the gradient goes to the first maximal element (torch.max(dim) semantics).
    public func max(axis: Int, keepDims: Bool = false) -> Tensor {
        let (values, indices) = maxWithIndices(axis: axis, keepDims: true)
        let a = normalize(axis), inShape = shape
        let out = keepDims ? values.detach() : values.detach().squeezed(a)
        return out.recorded("max", [self]) { g in
            let gi = keepDims ? g : g.unsqueezed(a)
            return [Tensor.scatter(gi, indices: indices, axis: a, shape: inShape)]
        }
    }
    public func argmax(axis: Int, keepDims: Bool = false) -> Tensor {
        let (_, indices) = maxWithIndices(axis: axis, keepDims: keepDims)
        return indices
    }
    /// Values and (float-valued) indices of the maxima along `axis`.
    func maxWithIndices(axis: Int, keepDims: Bool) -> (Tensor, Tensor) {
        let a = normalize(axis)
        let (p, outer, inner, kept) = splitForReduction([a])
        defer { withExtendedLifetime(p) {} }
        var outShape = kept
        if keepDims { outShape.insert(1, at: a) }
        let vals = Tensor.empty(outShape), idx = Tensor.empty(outShape)
        let s = p.data, v = vals.data, ix = idx.data
        Parallel.forEach(outer, costPerItem: inner) { o in
            let row = s + o * inner
            var best = row[0], bi = 0
            for i in 1..<Swift.max(inner, 1) where row[i] > best || (best.isNaN == false && row[i].isNaN) {
                best = row[i]
                bi = i
            }
            v[o] = best
            ix[o] = Float(bi)
        }
        return (vals, idx)
    }

    /// Places `values` (shape of `indices`, size 1 along axis) at `indices` along `axis` in zeros of `shape`.
    static func scatter(_ values: Tensor, indices: Tensor, axis: Int, shape: [Int]) -> Tensor {
        let out = Tensor(zeros: shape)
        let outer = shape[..<axis].reduce(1, *), n = shape[axis], inner = shape[(axis + 1)...].reduce(1, *)
        let v = values.contiguous(), ic = indices.contiguous(), d = out.data, vs = v.data, ix = ic.data
        defer { withExtendedLifetime((v, ic)) {} }
        for o in 0..<outer { for i in 0..<inner {
            let k = Int(ix[o * inner + i])
            d[(o * n + k) * inner + i] += vs[o * inner + i]
        } }
        return out
    }
}
