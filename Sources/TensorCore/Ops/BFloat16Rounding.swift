// bfloat16 rounding of float32 values, kept in float32 storage: the value a torch tensor has after
// `.to(torch.bfloat16)` (round to nearest even, DType.swift's bf16Bits), for emulating bf16 autocast on CPUs without
// bf16 arithmetic (NeuralNetwork's Autocast). Not a kernel: one elementwise pass.

extension Tensor {
    /// Every element rounded to the nearest bfloat16 (ties to even), as float32. Autograd: the gradient is rounded
    /// the same way, as in torch autocast, where the gradient of a bf16 tensor is itself bf16 (a bf16 op's backward
    /// returns bf16 gradients; the cast back to the float32 master weight is exact).
    public func roundedToBFloat16() -> Tensor {
        mapKernel(self) { floatFromBF16(bf16Bits($0)) }.recorded("round_bf16", [self]) { g in [g.roundedToBFloat16()] }
    }
}
