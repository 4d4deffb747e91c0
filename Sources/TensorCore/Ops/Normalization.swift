import Foundation
import CKernels

// torch.nn.functional.group_norm (optionally fused with SiLU, the CompVis `Normalize` + `nonlinearity` pair),
// layer_norm, softmax and log_softmax along the last axis, with backward passes.

extension Tensor {
    /// F.group_norm over (N, C, *) with affine `weight`/`bias` (C); `silu` fuses the activation that follows it.
    /// `adding` (N, C): group_norm(self + adding broadcast over the spatial axes), as a resnet adds its time embedding
    /// before norm2; in inference the sum is made one group at a time in a small buffer (the same float32 sums, no
    /// tensor of the input's size), recording gradients it is the broadcast sum as written.
    public func groupNorm(groups: Int, weight: Tensor?, bias: Tensor?, eps: Float = 1e-5, silu: Bool = false, adding shift: Tensor? = nil) -> Tensor {
        if let shift, GradMode.shouldRecord([self, shift] + [weight, bias].compactMap { $0 }) {
            return (self + shift.reshaped([shift.count / shape[1], shape[1]] + Array(repeating: 1, count: rank - 2)))
                .groupNorm(groups: groups, weight: weight, bias: bias, eps: eps, silu: silu)
        }
        return OpTimes.measure("group norm\(shift != nil ? " (+ shift)" : "")\(silu ? " + SiLU" : "")") {
            groupNormOp(groups: groups, weight: weight, bias: bias, eps: eps, silu: silu, shift: shift)
        }
    }

    private func groupNormOp(groups: Int, weight: Tensor?, bias: Tensor?, eps: Float, silu: Bool, shift: Tensor?) -> Tensor {
        let n = shape[0], c = shape[1]
        precondition(rank >= 2 && c % groups == 0, "group_norm: \(c) channels not divisible into \(groups) groups (shape \(shape))")
        let x = float32().contiguous()
        let spatial = count / (n * c), cpg = c / groups, m = cpg * spatial
        let out = Tensor.empty(shape)
        let mean = Tensor.empty([n, groups]), rstd = Tensor.empty([n, groups])
        let xs = x.data, ys = out.data, mp = mean.data, rp = rstd.data
        let gw = weight?.float32().contiguous(), gb = bias?.float32().contiguous()
        let wp = gw?.data, bp = gb?.data
        let sh = shift?.float32().contiguous(), sp = sh?.data
        let shiftBatch = (sh?.count ?? 0) / c // 1: one shift for every image
        precondition(sh == nil || (sh!.count % c == 0 && (shiftBatch == n || shiftBatch == 1)), "group_norm: shift \(sh!.shape) for input \(shape)")
        defer { withExtendedLifetime((x, gw, gb, sh)) {} }
        Parallel.forEach(n * groups, costPerItem: m * 3) { ng in
            var base = UnsafePointer(xs + ng * m)
            let shifted = sp.map { sp in
                let buf = UnsafeMutablePointer<Float>.allocate(capacity: m)
                let c0 = (shiftBatch == 1 ? 0 : ng / groups * c) + ng % groups * cpg
                for cc in 0..<cpg { for j in 0..<spatial { buf[cc * spatial + j] = base[cc * spatial + j] + sp[c0 + cc] } }
                return buf
            }
            defer { shifted?.deallocate() }
            if let shifted { base = UnsafePointer(shifted) }
            let (mu, r) = groupStatistics(base, channels: cpg, spatial: spatial, eps: eps)
            mp[ng] = mu
            rp[ng] = r
            let g0 = (ng % groups) * cpg
            for cc in 0..<cpg {
                let a = r * (wp?[g0 + cc] ?? 1), b = (bp?[g0 + cc] ?? 0) - mu * a
                let src = base + cc * spatial, dst = ys + ng * m + cc * spatial
                ck_affine(src, dst, spatial, a, b, silu ? 1 : 0)
            }
        }
        var inputs = [self]
        if let weight { inputs.append(weight) }
        if let bias { inputs.append(bias) }
        let shp = shape
        return out.recorded(silu ? "group_norm_silu" : "group_norm", inputs) { g in
            // The kernels below read through raw pointers: keep their tensors alive.
            withExtendedLifetime((x, mean, rstd, gw, gb)) {}
            let gy = g.contiguous()
            let gx = Tensor.empty(shp), dgamma = Tensor(zeros: [n, c]), dbeta = Tensor(zeros: [n, c])
            let gp = gy.data, dx = gx.data, dgp = dgamma.data, dbp = dbeta.data
            Parallel.forEach(n * groups, costPerItem: m * 4) { ng in
                let mu = mp[ng], r = rp[ng], g0 = (ng % groups) * cpg, nIdx = ng / groups
                var sumDy = 0.0, sumDyXhat = 0.0
                for cc in 0..<cpg {
                    let w = wp?[g0 + cc] ?? 1
                    let xr = xs + ng * m + cc * spatial, gr = gp + ng * m + cc * spatial
                    var a: Float = 0, b: Float = 0
                    if silu {
                        // Fused SiLU: dy = g * silu'(z), z = x * (r w) + (beta - mu r w) as in the forward; dy is
                        // parked in the dx buffer and read back by the second pass.
                        let za = r * w, zb = (bp?[g0 + cc] ?? 0) - mu * za, dr = dx + ng * m + cc * spatial
                        ck_silu_affine_backward(xr, gr, dr, spatial, za, zb, mu, r, &a, &b)
                    } else {
                        for j in 0..<spatial {
                            let xh = (xr[j] - mu) * r
                            a += gr[j]
                            b += gr[j] * xh
                        }
                    }
                    dgp[nIdx * c + g0 + cc] = b
                    dbp[nIdx * c + g0 + cc] = a
                    sumDy += Double(a * w)
                    sumDyXhat += Double(b * w)
                }
                let meanDy = Float(sumDy / Double(m)), meanDyXhat = Float(sumDyXhat / Double(m))
                for cc in 0..<cpg {
                    let w = wp?[g0 + cc] ?? 1
                    let xr = xs + ng * m + cc * spatial, dr = dx + ng * m + cc * spatial
                    let gr = silu ? UnsafePointer(dr) : UnsafePointer(gp + ng * m + cc * spatial)
                    for j in 0..<spatial {
                        let xh = (xr[j] - mu) * r
                        dr[j] = r * (gr[j] * w - meanDy - xh * meanDyXhat)
                    }
                }
            }
            var grads: [Tensor?] = [gx]
            if weight != nil { grads.append(dgamma.sum(axes: [0])) }
            if bias != nil { grads.append(dbeta.sum(axes: [0])) }
            withExtendedLifetime((x, mean, rstd, gw, gb, gy)) {}
            return grads
        }
    }

    /// F.layer_norm over the last axis.
    public func layerNorm(weight: Tensor?, bias: Tensor?, eps: Float = 1e-5) -> Tensor {
        OpTimes.measure("layer norm") { layerNormOp(weight: weight, bias: bias, eps: eps) }
    }

    private func layerNormOp(weight: Tensor?, bias: Tensor?, eps: Float) -> Tensor {
        let d = shape[rank - 1], rows = count / d
        var inputs = [self]
        if let weight { inputs.append(weight) }
        if let bias { inputs.append(bias) }
        // x-hat is kept for the backward only when one is recorded (in inference, one write of the output's size less).
        let records = GradMode.shouldRecord(inputs)
        let x = float32().contiguous(), out = Tensor.empty(shape)
        let rstd = Tensor.empty([rows]), xhat = Tensor.empty(records ? shape : [0])
        let xs = x.data, ys = out.data, rp = rstd.data, hp = xhat.data
        let gw = weight?.float32().contiguous(), gb = bias?.float32().contiguous()
        let wp = gw?.data, bp = gb?.data
        defer { withExtendedLifetime((x, gw, gb)) {} }
        Parallel.forEach(rows, costPerItem: d * 3) { r in
            let row = xs + r * d
            let mu = vectorSum(row, d) / Float(d)
            let rs = 1 / (vectorSumSquaredDeviation(row, d, mu) / Float(d) + eps).squareRoot()
            rp[r] = rs
            let o = ys + r * d
            if records {
                let h = hp + r * d
                for j in 0..<d {
                    let xh = (row[j] - mu) * rs
                    h[j] = xh
                    o[j] = xh * (wp?[j] ?? 1) + (bp?[j] ?? 0)
                }
            } else {
                for j in 0..<d { o[j] = (row[j] - mu) * rs * (wp?[j] ?? 1) + (bp?[j] ?? 0) }
            }
        }
        let shp = shape
        return out.recorded("layer_norm", inputs) { g in
            let gy = g.contiguous(), gx = Tensor.empty(shp)
            defer { withExtendedLifetime((rstd, xhat, gw)) {} }
            let gp = gy.data, dx = gx.data
            Parallel.forEach(rows, costPerItem: d * 4) { r in
                let gr = gp + r * d, h = hp + r * d, o = dx + r * d
                var a: Float = 0, b: Float = 0
                for j in 0..<d {
                    let gw = gr[j] * (wp?[j] ?? 1)
                    a += gw
                    b += gw * h[j]
                }
                let rs = rp[r], ma = a / Float(d), mb = b / Float(d)
                for j in 0..<d { o[j] = rs * (gr[j] * (wp?[j] ?? 1) - ma - h[j] * mb) }
            }
            var grads: [Tensor?] = [gx]
            let flat = gy.reshaped([rows, d])
            if weight != nil { grads.append((flat * xhat.reshaped([rows, d])).sum(axes: [0])) }
            if bias != nil { grads.append(flat.sum(axes: [0])) }
            return grads
        }
    }

    /// Row-wise softmax kernel over the last axis: writes exp(x - max) normalised (`log: false`) or x - logsumexp.
    private func lastAxisSoftmax(log: Bool) -> Tensor {
        let d = shape[rank - 1], rows = count / d
        let x = float32().contiguous(), out = Tensor.empty(shape)
        let xs = x.data, ys = out.data
        defer { withExtendedLifetime(x) {} }
        Parallel.forEach(rows, costPerItem: d * 4) { r in
            let row = xs + r * d, o = ys + r * d
            let mx = vectorMax(row, d)
            o.update(from: row, count: d)
            let s = ck_exp_shifted_sum(o, d, mx)
            if log {
                let lse = mx + Foundation.log(s)
                for j in 0..<d { o[j] = row[j] - lse }
            }
            else {
                let inv = 1 / s
                for j in 0..<d { o[j] *= inv }
            }
        }
        return out
    }

    /// Softmax along the last axis.
    public func softmax() -> Tensor {
        let out = lastAxisSoftmax(log: false)
        return out.recorded("softmax", [self]) { g in
            let gy = g * out
            return [gy - out * gy.sum(axes: [-1], keepDims: true)]
        }
    }

    /// log_softmax along the last axis.
    public func logSoftmax() -> Tensor {
        let out = lastAxisSoftmax(log: true)
        return out.recorded("log_softmax", [self]) { g in [g - out.exp() * g.sum(axes: [-1], keepDims: true)] }
    }
}

/// Mean and 1/sqrt(var + eps) of one group (`channels` rows of `spatial` values): two passes (mean, then squared
/// deviations), summed per channel row in float32 SIMD lanes and across rows in Double (CKernels' `ck_group_stats`,
/// at the ISA level chosen at load time).
@inline(__always)
func groupStatistics(_ base: UnsafePointer<Float>, channels cpg: Int, spatial: Int, eps: Float) -> (mean: Float, rstd: Float) {
    var mean: Float = 0, rstd: Float = 0
    ck_group_stats(base, cpg, spatial, eps, &mean, &rstd)
    return (mean, rstd)
}

/// Group norm as a per-(sample, channel) affine map: normalised x = x * scale + shift, exactly the coefficients
/// `groupNorm` applies. `x` must be contiguous float32 (N, C, *).
func groupNormChannelAffine(_ x: Tensor, groups: Int, weight: Tensor?, bias: Tensor?, eps: Float) -> (scale: [Float], shift: [Float]) {
    let n = x.shape[0], c = x.shape[1]
    precondition(x.rank >= 2 && c % groups == 0, "group_norm: \(c) channels not divisible into \(groups) groups (shape \(x.shape))")
    let spatial = x.count / (n * c), cpg = c / groups
    let gw = weight?.float32().contiguous(), gb = bias?.float32().contiguous()
    var scale = [Float](repeating: 0, count: n * c), shift = [Float](repeating: 0, count: n * c)
    withExtendedLifetime((x, gw, gb)) {
        let xs = x.data, wp = gw?.data, bp = gb?.data
        scale.withUnsafeMutableBufferPointer { sc in shift.withUnsafeMutableBufferPointer { sh in
            let scp = sc.baseAddress!, shp = sh.baseAddress!
            Parallel.forEach(n * groups, costPerItem: cpg * spatial * 2) { ng in
                let (mu, r) = groupStatistics(xs + ng * cpg * spatial, channels: cpg, spatial: spatial, eps: eps)
                let g0 = (ng % groups) * cpg, row = (ng / groups) * c
                for cc in 0..<cpg {
                    let a = r * (wp?[g0 + cc] ?? 1)
                    scp[row + g0 + cc] = a
                    shp[row + g0 + cc] = (bp?[g0 + cc] ?? 0) - mu * a
                }
            }
        } }
    }
    return (scale, shift)
}
