// F.interpolate (nearest, bilinear with align_corners=False), F.avg_pool2d and F.max_pool2d on (N, C, H, W), with backward.

extension Tensor {
    /// F.interpolate(mode="nearest") by integer factors: src index = floor(dst * in / out), as PyTorch.
    /// `sourceScale` (src = dst * scale per axis) is PyTorch's 1 / scale_factor when F.interpolate is given a
    /// scale_factor rather than a size (it differs from in / out when the size does not divide evenly).
    public func upsampleNearest(height oh: Int, width ow: Int, sourceScale: (Float, Float)? = nil) -> Tensor {
        let (n, c, h, w) = (shape[0], shape[1], shape[2], shape[3])
        let x = float32().contiguous(), out = Tensor.empty([n, c, oh, ow])
        defer { withExtendedLifetime(x) {} }
        let xs = x.data, ys = out.data
        func index(_ dst: Int, _ outN: Int, _ inN: Int, _ scale: Float?) -> Int {
            let src = scale.map { Int(Float(dst) * $0) } ?? Int(Float(dst) * Float(inN) / Float(outN))
            return Swift.min(src, inN - 1)
        }
        let colIdx = (0..<ow).map { index($0, ow, w, sourceScale?.1) }
        let rowIdx = (0..<oh).map { index($0, oh, h, sourceScale?.0) }
        Parallel.forEach(n * c, costPerItem: oh * ow) { p in
            let src = xs + p * h * w, dst = ys + p * oh * ow
            for i in 0..<oh {
                let s = src + rowIdx[i] * w, d = dst + i * ow
                for j in 0..<ow { d[j] = s[colIdx[j]] }
            }
        }
        let inShape = shape
        return out.recorded("upsample_nearest", [self]) { g in
            let gy = g.contiguous(), gx = Tensor(zeros: inShape), gp = gy.data, dp = gx.data
            defer { withExtendedLifetime(gy) {} }
            Parallel.forEach(n * c, costPerItem: oh * ow) { p in
                let src = gp + p * oh * ow, dst = dp + p * h * w
                for i in 0..<oh {
                    let d = dst + rowIdx[i] * w, s = src + i * ow
                    for j in 0..<ow { d[colIdx[j]] += s[j] }
                }
            }
            return [gx]
        }
    }

    /// F.interpolate(mode="bilinear", align_corners=False) (PyTorch's source index: (dst + 0.5) * scale - 0.5, clamped at 0).
    /// `sourceScale` as for `upsampleNearest` (PyTorch's 1 / scale_factor).
    public func upsampleBilinear(height oh: Int, width ow: Int, sourceScale: (Float, Float)? = nil) -> Tensor {
        let (n, c, h, w) = (shape[0], shape[1], shape[2], shape[3])
        func weights(_ outN: Int, _ inN: Int, _ given: Float?) -> [(Int, Int, Float)] {
            let scale = given ?? Float(inN) / Float(outN)
            return (0..<outN).map { i in
                let src = Swift.max((Float(i) + 0.5) * scale - 0.5, 0)
                let i0 = Swift.min(Int(src), inN - 1), i1 = Swift.min(i0 + 1, inN - 1)
                return (i0, i1, src - Float(i0))
            }
        }
        let ry = weights(oh, h, sourceScale?.0), rx = weights(ow, w, sourceScale?.1)
        let x = float32().contiguous(), out = Tensor.empty([n, c, oh, ow])
        defer { withExtendedLifetime(x) {} }
        let xs = x.data, ys = out.data
        Parallel.forEach(n * c, costPerItem: oh * ow * 4) { p in
            let src = xs + p * h * w, dst = ys + p * oh * ow
            for i in 0..<oh {
                let (y0, y1, fy) = ry[i]
                for j in 0..<ow {
                    let (x0, x1, fx) = rx[j]
                    let top = src[y0 * w + x0] * (1 - fx) + src[y0 * w + x1] * fx
                    let bot = src[y1 * w + x0] * (1 - fx) + src[y1 * w + x1] * fx
                    dst[i * ow + j] = top * (1 - fy) + bot * fy
                }
            }
        }
        let inShape = shape
        return out.recorded("upsample_bilinear", [self]) { g in
            let gy = g.contiguous(), gx = Tensor(zeros: inShape), gp = gy.data, dp = gx.data
            defer { withExtendedLifetime(gy) {} }
            Parallel.forEach(n * c, costPerItem: oh * ow * 4) { p in
                let src = gp + p * oh * ow, dst = dp + p * h * w
                for i in 0..<oh {
                    let (y0, y1, fy) = ry[i]
                    for j in 0..<ow {
                        let (x0, x1, fx) = rx[j], v = src[i * ow + j]
                        dst[y0 * w + x0] += v * (1 - fy) * (1 - fx)
                        dst[y0 * w + x1] += v * (1 - fy) * fx
                        dst[y1 * w + x0] += v * fy * (1 - fx)
                        dst[y1 * w + x1] += v * fy * fx
                    }
                }
            }
            return [gx]
        }
    }

    /// F.max_pool2d(kernel, stride) without padding or dilation; the gradient goes to the first maximum of each
    /// window in row-major order (as PyTorch's CPU kernel: `val > maxval || isnan(val)`).
    public func maxPool2d(kernel k: Int, stride s: Int? = nil) -> Tensor {
        let s = s ?? k
        let (n, c, h, w) = (shape[0], shape[1], shape[2], shape[3])
        let oh = (h - k) / s + 1, ow = (w - k) / s + 1
        precondition(oh > 0 && ow > 0, "max_pool2d: kernel \(k) larger than input \(shape)")
        let x = float32().contiguous(), out = Tensor.empty([n, c, oh, ow])
        var argmax = [Int32](repeating: 0, count: n * c * oh * ow)
        defer { withExtendedLifetime(x) {} }
        let xs = x.data, ys = out.data
        argmax.withUnsafeMutableBufferPointer { am in
            let ap = am.baseAddress!
            Parallel.forEach(n * c, costPerItem: oh * ow * k * k) { p in
                let src = xs + p * h * w, dst = ys + p * oh * ow, idx = ap + p * oh * ow
                for i in 0..<oh { for j in 0..<ow {
                    var best = -Float.infinity, bi = (i * s) * w + j * s
                    for a in 0..<k { for b in 0..<k {
                        let q = (i * s + a) * w + j * s + b, v = src[q]
                        if v > best || v.isNaN {
                            best = v
                            bi = q
                        }
                    } }
                    dst[i * ow + j] = best
                    idx[i * ow + j] = Int32(bi)
                } }
            }
        }
        let inShape = shape
        return out.recorded("max_pool2d", [self]) { g in
            let gy = g.contiguous(), gx = Tensor(zeros: inShape), gp = gy.data, dp = gx.data
            defer { withExtendedLifetime(gy) {} }
            argmax.withUnsafeBufferPointer { am in
                let ap = am.baseAddress!
                Parallel.forEach(n * c, costPerItem: oh * ow) { p in
                    let src = gp + p * oh * ow, dst = dp + p * h * w, idx = ap + p * oh * ow
                    for q in 0..<(oh * ow) { dst[Int(idx[q])] += src[q] }
                }
            }
            return [gx]
        }
    }

    /// F.avg_pool2d(kernel, stride) without padding.
    public func avgPool2d(kernel k: Int, stride s: Int? = nil) -> Tensor {
        let s = s ?? k
        let (n, c, h, w) = (shape[0], shape[1], shape[2], shape[3])
        let oh = (h - k) / s + 1, ow = (w - k) / s + 1
        precondition(oh > 0 && ow > 0, "avg_pool2d: kernel \(k) larger than input \(shape)")
        let x = float32().contiguous(), out = Tensor.empty([n, c, oh, ow])
        defer { withExtendedLifetime(x) {} }
        let xs = x.data, ys = out.data, inv = 1 / Float(k * k)
        Parallel.forEach(n * c, costPerItem: oh * ow * k * k) { p in
            let src = xs + p * h * w, dst = ys + p * oh * ow
            for i in 0..<oh { for j in 0..<ow {
                var acc: Float = 0
                for a in 0..<k { for b in 0..<k { acc += src[(i * s + a) * w + j * s + b] } }
                dst[i * ow + j] = acc * inv
            } }
        }
        let inShape = shape
        return out.recorded("avg_pool2d", [self]) { g in
            let gy = g.contiguous(), gx = Tensor(zeros: inShape), gp = gy.data, dp = gx.data
            defer { withExtendedLifetime(gy) {} }
            Parallel.forEach(n * c, costPerItem: oh * ow * k * k) { p in
                let src = gp + p * oh * ow, dst = dp + p * h * w
                for i in 0..<oh { for j in 0..<ow {
                    let v = src[i * ow + j] * inv
                    for a in 0..<k { for b in 0..<k { dst[(i * s + a) * w + j * s + b] += v } }
                } }
            }
            return [gx]
        }
    }
}
