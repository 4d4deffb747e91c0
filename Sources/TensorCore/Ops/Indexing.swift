// F.embedding, torch.gather, F.dropout, the L1/MSE losses, and random tensors from a RandomSource.

/// F.embedding: rows of `weight` (V, D) at integer `indices` (any shape, float-valued ids) -> indices.shape + [D].
public func embedding(_ indices: [Int], shape: [Int], weight: Tensor) -> Tensor {
    let v = weight.shape[0], d = weight.shape[1]
    precondition(indices.count == shape.reduce(1, *), "embedding: \(indices.count) ids for shape \(shape)")
    for i in indices { precondition(i >= 0 && i < v, "embedding: id \(i) outside vocabulary of \(v)") }
    let w = weight.float32().contiguous(), out = Tensor.empty(shape + [d])
    withExtendedLifetime(w) { for (r, i) in indices.enumerated() { (out.data + r * d).update(from: w.data + i * d, count: d) } }
    return out.recorded("embedding", [weight]) { g in
        let gw = Tensor(zeros: [v, d]), gy = g.contiguous()
        for (r, i) in indices.enumerated() {
            let dst = gw.data + i * d, src = gy.data + r * d
            for j in 0..<d { dst[j] += src[j] }
        }
        return [gw]
    }
}

extension Tensor {
    /// torch.gather(self, axis, index) with integer `index` of the same rank.
    public func gather(axis: Int, index: [Int], indexShape: [Int]) -> Tensor {
        let a = normalize(axis)
        precondition(indexShape.count == rank && index.count == indexShape.reduce(1, *), "gather: index shape \(indexShape) vs \(shape)")
        let x = float32().contiguous(), out = Tensor.empty(indexShape)
        let outer = indexShape[..<a].reduce(1, *), n = indexShape[a], inner = indexShape[(a + 1)...].reduce(1, *)
        let srcN = shape[a], srcInner = shape[(a + 1)...].reduce(1, *)
        func srcOffset(_ o: Int, _ k: Int, _ i: Int) -> Int {
            let idx = index[(o * n + k) * inner + i]
            precondition(idx >= 0 && idx < srcN, "gather: index \(idx) out of range \(srcN)")
            return (o * srcN + idx) * srcInner + i
        }
        for o in 0..<outer { for k in 0..<n { for i in 0..<inner { out.data[(o * n + k) * inner + i] = x.data[srcOffset(o, k, i)] } } }
        let inShape = shape
        return out.recorded("gather", [self]) { g in
            let gx = Tensor(zeros: inShape), gy = g.contiguous()
            for o in 0..<outer { for k in 0..<n { for i in 0..<inner { gx.data[srcOffset(o, k, i)] += gy.data[(o * n + k) * inner + i] } } }
            return [gx]
        }
    }

    /// F.dropout in training mode: zeroes with probability p and scales the rest by 1/(1-p).
    public func dropout(_ p: Float, generator: RandomSource) -> Tensor {
        precondition(p >= 0 && p < 1, "dropout: p = \(p) outside [0, 1)")
        if p == 0 { return self }
        let u = generator.uniform(count: count)
        let mask = Tensor(u.map { $0 >= p ? 1 / (1 - p) : 0 }, shape: shape)
        return self * mask
    }

    /// Standard normal values shaped `shape`, drawn as torch.randn(shape, generator=g) does.
    public static func randn(_ shape: [Int], generator: RandomSource) -> Tensor {
        Tensor(generator.normal(count: shape.reduce(1, *)), shape: shape)
    }
    /// Uniform [0, 1) values as torch.rand.
    public static func rand(_ shape: [Int], generator: RandomSource) -> Tensor {
        Tensor(generator.uniform(count: shape.reduce(1, *)), shape: shape)
    }
}

/// F.mse_loss with mean reduction.
public func mseLoss(_ input: Tensor, _ target: Tensor) -> Tensor { (input - target).square().mean() }
/// F.l1_loss with mean reduction.
public func l1Loss(_ input: Tensor, _ target: Tensor) -> Tensor { (input - target).abs().mean() }
