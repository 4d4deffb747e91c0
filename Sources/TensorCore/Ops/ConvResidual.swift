import Foundation

/// conv2d(x, weight, bias, options) + residual. A 1x1 convolution (stride 1, no padding, one group) in float32 inference
/// runs as one sgemm per image whose output starts as residual + bias (beta 1: one pass over the output less than an
/// add after the convolution), and an input whose channels are its innermost axis (a transformer's (B, H, W, C) tokens
/// seen as NCHW, as proj_out gets them) is read in place as a transposed operand instead of being copied to NCHW.
/// Anything else (other kernels, recording gradients, native bf16, `LDM_CONV1X1_GEMM=0`) is the sum as written.
public func conv2d(_ x: Tensor, _ weight: Tensor, _ bias: Tensor?, _ options: Conv2dOptions, adding residual: Tensor) -> Tensor {
    let operands = [x, weight, residual] + (bias.map { [$0] } ?? [])
    guard x.rank == 4, weight.rank == 4, weight.shape[1] == x.shape[1], weight.shape[2] == 1, weight.shape[3] == 1,
          options.stride == (1, 1), options.groups == 1, options.padding == (0, 0, 0, 0), ConvWeightCache.pointwiseGEMM,
          !GradMode.shouldRecord(operands), !NativeBF16.applies(operands), operands.allSatisfy({ $0.dtype == .float32 }),
          residual.shape == [x.shape[0], weight.shape[0], x.shape[2], x.shape[3]]
    else { return conv2d(x, weight, bias, options) + residual }
    let (n, ic, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]), oc = weight.shape[0], hw = h * w
    return OpTimes.measure("conv 1x1/1 \(h)x\(w) GEMM f32 + residual") {
        let channelsLast = x.strides[1] == 1 && x.strides[3] == ic && x.strides[2] == w * ic
        let xin = channelsLast ? x : x.contiguous(), r = residual.contiguous(), bc = bias?.contiguous(), w32 = weight.contiguous()
        let out = Tensor.empty([n, oc, h, w])
        withExtendedLifetime((xin, r, bc, w32)) {
            let o = out.data, rp = r.data, bp = bc?.data
            Parallel.forEach(n * oc, costPerItem: hw) { row in
                if let bp {
                    let b = bp[row % oc]
                    for i in 0..<hw { o[row * hw + i] = rp[row * hw + i] + b }
                } else {
                    (o + row * hw).update(from: rp + row * hw, count: hw)
                }
            }
            for b in 0..<n {
                if channelsLast {
                    DNNL.sgemm(false, true, oc, hw, ic, 1, w32.data, ic, xin.data + b * xin.strides[0], ic, 1, o + b * oc * hw, hw)
                } else {
                    DNNL.sgemm(false, false, oc, hw, ic, 1, w32.data, ic, xin.data + b * ic * hw, hw, 1, o + b * oc * hw, hw)
                }
            }
        }
        return out
    }
}
