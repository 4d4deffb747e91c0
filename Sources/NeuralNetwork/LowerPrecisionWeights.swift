import TensorCore

// bf16 weights for native bf16 inference, as `model.to(torch.bfloat16)` holds them: the weights of the layers on
// torch autocast's lower-precision list that our models run (Linear, Conv2d) stored as bfloat16 in place of their
// float32 tensors, so that the float32 copy is gone (half the memory of those weights) and the native bf16 kernels
// read them as stored (NativeBF16: linear layers directly, convolutions through one reorder to the kernel's layout;
// float32 Winograd widens them per call). Biases and normalisation parameters stay float32. Under bf16 autocast the
// kernels round weights to bf16 anyway, so the results are unchanged; float32 compute on such a model uses the
// bf16-rounded weights.

extension Module {
    /// Stores every Linear and Conv2d weight reachable from this module (through stored properties of modules,
    /// structs, tuples, optionals and arrays of those) as bfloat16 (from float32 or float16). For inference only: the
    /// new tensors record no gradient. Returns the bytes freed (returned to the system: the buffer cache is emptied).
    @discardableResult
    public func storeLowerPrecisionWeightsInBFloat16() -> Int {
        var freed = 0
        forEachLayer { module in
            if let l = module as? Linear, l.weight.dtype != .bfloat16 {
                freed += l.weight.count * (l.weight.dtype.byteSize - 2)
                l.weight = l.weight.to(.bfloat16)
            } else if let c = module as? Conv2d, c.weight.dtype != .bfloat16 {
                freed += c.weight.count * (c.weight.dtype.byteSize - 2)
                c.weight = c.weight.to(.bfloat16)
            }
        }
        // The buffers just freed would stay in TensorCore's buffer cache (the live peak was float32-sized).
        releaseCachedTensorBuffers()
        return freed
    }
}
