import Foundation

// 1x1 convolutions (stride 1, no padding, one group) in inference that fuse what follows them into their per-image
// GEMMs (`pointwiseGEMM`, Convolution.swift): a residual add, the transformer token layout.

/// conv2d(x, weight, bias, options) + residual. A 1x1 convolution (stride 1, no padding, one group) in inference runs as
/// one GEMM per image whose output starts as residual + bias and accumulates the product (beta 1: one pass over the
/// output less than an add after the convolution), and an input whose channels are its innermost axis (a transformer's
/// (B, H, W, C) tokens seen as NCHW, as proj_out gets them) is read in place as a transposed operand instead of being
/// copied to NCHW. In float32 that is sgemm; under native bf16 oneDNN's bf16 GEMM (bf16 input and weight, float32
/// accumulation), so the residual is added to the float32 product before any rounding. Anything else (other kernels,
/// recording gradients, non-float32 operands outside native bf16, `LDM_CONV1X1_GEMM=0`) is the sum as written.
public func conv2d(_ x: Tensor, _ weight: Tensor, _ bias: Tensor?, _ options: Conv2dOptions, adding residual: Tensor) -> Tensor {
    let operands = [x, weight, residual] + (bias.map { [$0] } ?? [])
    let bf16 = NativeBF16.applies(operands)
    guard pointwiseInference(x, weight, options, operands), bf16 || operands.allSatisfy({ $0.dtype == .float32 }),
          residual.shape == [x.shape[0], weight.shape[0], x.shape[2], x.shape[3]]
    else { return conv2d(x, weight, bias, options) + residual }
    let (n, ic, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]), oc = weight.shape[0], hw = h * w
    return OpTimes.measure("conv 1x1/1 \(h)x\(w) GEMM \(bf16 ? "bf16" : "f32") + residual") {
        let channelsLast = x.dtype == .float32 && x.strides[1] == 1 && x.strides[3] == ic && x.strides[2] == w * ic
        let xin = channelsLast ? x : x.float32().contiguous(), r = residual.float32().contiguous(), bc = bias?.float32().contiguous()
        let out = Tensor.empty([n, oc, h, w])
        withExtendedLifetime((r, bc)) {
            let o = out.data, rp = r.data, bp = bc?.data
            Parallel.forEach(n * oc, costPerItem: hw) { row in
                if let bp {
                    let b = bp[row % oc]
                    for i in 0..<hw { o[row * hw + i] = rp[row * hw + i] + b }
                } else {
                    (o + row * hw).update(from: rp + row * hw, count: hw)
                }
            }
        }
        pointwiseGEMM(xin, channelsLast: channelsLast, weight, bf16: bf16, accumulating: true, into: out)
        return out
    }
}

/// conv2d(x, weight, bias, options) as (N, H*W, O) tokens, contiguous: what a transformer's proj_in hands its blocks.
/// A 1x1 convolution under native bf16 inference writes them directly (per image the transposed GEMM x^T W^T onto rows
/// that start as the bias) instead of an NCHW output and a copy into tokens; anything else, float32 included, is the
/// convolution's NCHW output permuted and copied.
public func conv2d(tokens x: Tensor, _ weight: Tensor, _ bias: Tensor?, _ options: Conv2dOptions) -> Tensor {
    let operands = [x, weight] + (bias.map { [$0] } ?? [])
    guard pointwiseInference(x, weight, options, operands), NativeBF16.applies(operands) else {
        let y = conv2d(x, weight, bias, options)
        return y.permuted([0, 2, 3, 1]).reshaped([y.shape[0], y.shape[2] * y.shape[3], y.shape[1]])
    }
    let (n, h, w) = (x.shape[0], x.shape[2], x.shape[3]), oc = weight.shape[0], rows = n * h * w
    return OpTimes.measure("conv 1x1/1 \(h)x\(w) GEMM bf16 -> tokens") {
        let xin = x.float32().contiguous(), bc = bias?.float32().contiguous()
        let out = Tensor.empty([n, h * w, oc])
        if let bc {
            let o = out.data, bp = bc.data
            withExtendedLifetime(bc) { Parallel.forEach(rows, costPerItem: oc) { row in (o + row * oc).update(from: bp, count: oc) } }
        }
        pointwiseGEMM(xin, channelsLast: false, weight, bf16: true, accumulating: bc != nil, into: out, tokensOut: true)
        return out
    }
}

/// Whether conv2d(x, weight, options) is a 1x1 convolution (stride 1, no padding, one group) that runs as per-image
/// GEMMs (`ConvWeightCache.pointwiseGEMM`) with no gradient recorded for `operands`.
private func pointwiseInference(_ x: Tensor, _ weight: Tensor, _ options: Conv2dOptions, _ operands: [Tensor]) -> Bool {
    x.rank == 4 && weight.rank == 4 && weight.shape[1] == x.shape[1] && weight.shape[2] == 1 && weight.shape[3] == 1
        && options.stride == (1, 1) && options.groups == 1 && options.padding == (0, 0, 0, 0) && ConvWeightCache.pointwiseGEMM
        && !GradMode.shouldRecord(operands)
}
