// Element types. float32 is the compute type of every kernel; bfloat16 and float16 are storage types
// (weights converted on load or on use), as torch.bfloat16 / torch.float16 tensors are when the CPU lacks them.

public enum DType: String, Sendable, CaseIterable {
    case float32, bfloat16, float16

    public var byteSize: Int { self == .float32 ? 4 : 2 }
}

/// bfloat16 <-> float32 with round-to-nearest-even, as torch's c10::BFloat16 (NaN stays NaN).
@inline(__always) public func bf16Bits(_ x: Float) -> UInt16 {
    let u = x.bitPattern
    if x.isNaN { return UInt16(truncatingIfNeeded: (u >> 16) | 0x40) }
    let rounding = ((u >> 16) & 1) &+ 0x7FFF
    return UInt16(truncatingIfNeeded: (u &+ rounding) >> 16)
}
@inline(__always) public func floatFromBF16(_ b: UInt16) -> Float { Float(bitPattern: UInt32(b) << 16) }
