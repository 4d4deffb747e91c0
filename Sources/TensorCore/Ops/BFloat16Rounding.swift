import CKernels

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

    /// The same values as `roundedToBFloat16()`, rounded in this tensor's own storage when it is a float32 contiguous
    /// tensor that records no gradient (a result an op has just produced: no second buffer, one pass), else a copy.
    public func roundingToBFloat16InPlace() -> Tensor { OpTimes.measure("bf16 rounding") { roundingInPlace() } }

    private func roundingInPlace() -> Tensor {
        guard dtype == .float32, isContiguous, !GradMode.shouldRecord([self]) else { return roundedToBFloat16() }
        let d = data
        Parallel.forRange(count, costPerItem: 4) { r in ck_round_bf16(d + r.lowerBound, r.count) }
        return self
    }
}
