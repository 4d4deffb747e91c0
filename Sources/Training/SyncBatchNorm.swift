// SyncBatchNorm after torch.nn.SyncBatchNorm (torch/nn/modules/batchnorm.py, and its autograd function in
// torch/nn/modules/_functions.py): in training mode a BatchNorm2d normalises with the statistics of the whole global
// batch, over all ranks of a data-parallel run, instead of its rank's shard.
//  - forward: each rank sums its shard per channel (sum, sum of squares, count: float64 here); one all-reduce of the
//    three gives every rank the global mean and biased variance; the running statistics are updated with the global
//    unbiased variance (var * n / (n - 1) over the global count n), so they are the same on every rank;
//  - backward: each rank sums dy and dy * (x - mean) per channel; the weight and bias gradients are those local sums
//    (data-parallel averaging then makes them the global batch's, as for every other parameter), and one all-reduce
//    of the two sums gives the input gradient
//        dx = (dy - sum_dy / n - (x - mean) * invstd^2 * sum_dy_xmu / n) * invstd * weight,
//    the gradient of the sum of every rank's loss (DDP averages the parameter gradients by 1 / N afterwards).
// As in torch, one process (or eval mode) uses the plain BatchNorm2d: nothing changes without data parallelism.
// The all-reduces run on MPI_COMM_WORLD in the forward and backward passes, in the same order on every rank (the
// graphs are the same); the gradient buckets in flight use a communicator of their own (GradientBuckets.swift).
import NeuralNetwork
import TensorCore

/// `bn` in training mode over the global batch of all ranks of `communicator` (see the file comment). `frozen`: the
/// affine weight and bias take part without gradients (BatchNorm2d's `frozen`); running statistics still update.
/// A failed all-reduce ends the process with its message (MPI's default error handler ends the job before).
public func syncBatchNorm(_ x: Tensor, _ bn: BatchNorm2d, frozen: Bool = false, communicator: Communicator) -> Tensor {
    let c = bn.weight.count
    precondition(x.rank == 4 && x.shape[1] == c, "SyncBatchNorm(\(c)): input \(x.shape)")
    let xc = x.float32().contiguous()
    let (batch, hw) = (x.shape[0], x.shape[2] * x.shape[3])
    // Local sums per channel, then the global ones: [sum (C), sum of squares (C), count].
    var stats = [Double](repeating: 0, count: 2 * c + 1)
    withExtendedLifetime(xc) {
        let p = xc.data
        for b in 0..<batch {
            for ch in 0..<c {
                let row = p + (b * c + ch) * hw
                var s = 0.0, ss = 0.0
                for i in 0..<hw {
                    let v = Double(row[i])
                    s += v
                    ss += v * v
                }
                stats[ch] += s
                stats[c + ch] += ss
            }
        }
    }
    stats[2 * c] = Double(batch * hw)
    allReduce(&stats, communicator, "statistics")
    let n = stats[2 * c]
    precondition(n > 1, "SyncBatchNorm: expected more than 1 value per channel when training, got \(n) over all ranks")
    var mean = [Float](repeating: 0, count: c), invstd = [Float](repeating: 0, count: c), variance = [Float](repeating: 0, count: c)
    for ch in 0..<c {
        let m = stats[ch] / n, v = max(stats[c + ch] / n - m * m, 0)
        mean[ch] = Float(m)
        variance[ch] = Float(v)
        invstd[ch] = Float(1 / (v + Double(bn.eps)).squareRoot())
    }
    GradMode.noGrad {
        let m = Tensor(mean, shape: [c]), v = Tensor(variance, shape: [c])
        bn.runningMean.assign(bn.runningMean * (1 - bn.momentum) + m * bn.momentum)
        bn.runningVar.assign(bn.runningVar * (1 - bn.momentum) + v * (Float(n / (n - 1)) * bn.momentum))
        bn.numBatchesTracked.assign(bn.numBatchesTracked + 1)
    }
    let weight = bn.weight.float32().contiguous().toArray(), bias = bn.bias.float32().contiguous().toArray()
    let y = Tensor(zeros: xc.shape)
    withExtendedLifetime((xc, y)) {
        let src = xc.data, dst = y.data
        for b in 0..<batch {
            for ch in 0..<c {
                let o = (b * c + ch) * hw, m = mean[ch], s = invstd[ch], w = weight[ch], bb = bias[ch]
                for i in 0..<hw { dst[o + i] = (src[o + i] - m) * s * w + bb }
            }
        }
    }
    let inputs = frozen ? [xc] : [xc, bn.weight, bn.bias]
    return y.recordingBackward("sync_batch_norm", inputs: inputs) { dy in
        let g = dy.float32().contiguous()
        // Local sums per channel: [sum dy (C), sum dy * (x - mean) (C)].
        var sums = [Double](repeating: 0, count: 2 * c)
        withExtendedLifetime((g, xc)) {
            let gp = g.data, xp = xc.data
            for b in 0..<batch {
                for ch in 0..<c {
                    let o = (b * c + ch) * hw, m = mean[ch]
                    var sd = 0.0, sdx = 0.0
                    for i in 0..<hw {
                        let d = Double(gp[o + i])
                        sd += d
                        sdx += d * Double(xp[o + i] - m)
                    }
                    sums[ch] += sd
                    sums[c + ch] += sdx
                }
            }
        }
        let gradWeight = frozen ? nil : Tensor((0..<c).map { Float(sums[c + $0]) * invstd[$0] }, shape: [c])
        let gradBias = frozen ? nil : Tensor((0..<c).map { Float(sums[$0]) }, shape: [c])
        var dx: Tensor?
        if xc.requiresGrad {
            allReduce(&sums, communicator, "gradient sums")
            let out = Tensor(zeros: xc.shape)
            withExtendedLifetime((g, xc, out)) {
                let gp = g.data, xp = xc.data, dst = out.data
                for ch in 0..<c {
                    let meanDy = Float(sums[ch] / n), meanDyXmu = Float(sums[c + ch] / n)
                    let m = mean[ch], s = invstd[ch], scale = s * weight[ch], k = s * s * meanDyXmu
                    for b in 0..<batch {
                        let o = (b * c + ch) * hw
                        for i in 0..<hw { dst[o + i] = (gp[o + i] - meanDy - (xp[o + i] - m) * k) * scale }
                    }
                }
            }
            dx = out
        }
        return frozen ? [dx] : [dx, gradWeight, gradBias]
    }
}

private func allReduce(_ values: inout [Double], _ communicator: Communicator, _ what: String) {
    do {
        try values.withUnsafeMutableBufferPointer { try communicator.allReduceSum($0) }
    } catch {
        fatalError("SyncBatchNorm: all-reduce of the \(what) failed: \(error)")
    }
}
