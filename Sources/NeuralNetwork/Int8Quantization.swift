import TensorCore

// int8 quantisation of a model's weights for inference (`--precision int8`): every Linear and Conv2d weight
// reachable from a module becomes an `Int8Weight` (s8 per output channel, TensorCore's Int8.swift), once, and the
// layers then run on the int8 VNNI kernels with their activations quantised per call. The float weights are no longer
// read: those that are pages of a memory-mapped weights file are dropped from memory (they stay in the page cache, not
// in the process), so the UNet's resident weights are the s8 copies, a quarter of float32. Weights the load owns
// (a pickle checkpoint, a merged LoRA) stay as they are. Inference only: the int8 layers record no gradient.

/// What `quantizeToInt8` did.
public struct Int8QuantizationReport: Sendable {
    /// Layers quantised.
    public var layers = 0
    /// Their weights' elements (the float32 bytes they would take are 4x this).
    public var elements = 0
    /// Bytes of the int8 weights (values, scales, sums).
    public var int8Bytes = 0
    /// Float weights that were pages of a mapped file and are no longer resident.
    public var releasedMappedBytes = 0
}

extension Module {
    /// Quantises the Linear and Conv2d weights reachable from this module, except the layers in `skipping` (by
    /// identity) and convolutions with groups or dilation (none in the diffusers UNets); layers already quantised are
    /// requantised from their float weights. Needs `Int8Compute.available` to run afterwards.
    @discardableResult
    public func quantizeToInt8(skipping: Set<ObjectIdentifier> = []) -> Int8QuantizationReport {
        var report = Int8QuantizationReport()
        func take(_ weight: Tensor) -> Int8Weight {
            let q = Int8Weight(weight)
            report.layers += 1
            report.elements += weight.count
            report.int8Bytes += q.byteCount
            if weight.storage.isFileMapping {
                report.releasedMappedBytes += weight.count * weight.dtype.byteSize
                weight.storage.evictResidentPages()
            }
            return q
        }
        forEachLayer { module in
            guard !skipping.contains(ObjectIdentifier(module)) else { return }
            if let l = module as? Linear { l.int8 = take(l.weight) }
            else if let c = module as? Conv2d, c.options.groups == 1, c.options.dilation == (1, 1) { c.int8 = take(c.weight) }
        }
        return report
    }

    /// Back to the float weights (drops every `Int8Weight`).
    public func removeInt8Quantization() {
        forEachLayer { module in
            if let l = module as? Linear { l.int8 = nil }
            else if let c = module as? Conv2d { c.int8 = nil }
        }
    }
}
