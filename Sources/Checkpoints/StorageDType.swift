// Element types of stored tensors. Names follow the safetensors `Dtype` enum
// (huggingface/safetensors safetensors/src/tensor.rs); conversion to Float follows
// torch's casts (half / bfloat16 / float8_e4m3fn / float8_e5m2 / float8_e8m0fnu to float32).
import Foundation

public enum StorageDType: String, CaseIterable, Sendable {
    case F64, F32, F16, BF16, I64, I32, I16, I8, U64, U32, U16, U8, BOOL
    case F8_E4M3, F8_E5M2, F8_E8M0, C64

    public var byteSize: Int {
        switch self {
        case .F64, .I64, .U64, .C64: return 8
        case .F32, .I32, .U32: return 4
        case .F16, .BF16, .I16, .U16: return 2
        case .I8, .U8, .BOOL, .F8_E4M3, .F8_E5M2, .F8_E8M0: return 1
        }
    }

    /// Rank in the safetensors Rust enum (declaration order); the writer sorts
    /// tensors by descending rank, then by name, exactly like `safetensors::tensor::prepare`.
    var safetensorsRank: Int {
        switch self {
        case .BOOL: return 0
        case .U8: return 4
        case .I8: return 5
        case .F8_E5M2: return 6
        case .F8_E4M3: return 7
        case .F8_E8M0: return 8
        case .I16: return 9
        case .U16: return 10
        case .F16: return 11
        case .BF16: return 12
        case .I32: return 13
        case .U32: return 14
        case .F32: return 15
        case .C64: return 16
        case .F64: return 17
        case .I64: return 18
        case .U64: return 19
        }
    }

    /// Whether `floats()` can convert this type (complex cannot).
    public var isConvertibleToFloat: Bool { self != .C64 }

    public init(parsing name: String) throws {
        guard let t = StorageDType(rawValue: name) else {
            throw CheckpointError("unknown dtype \"\(name.prefix(40))\"")
        }
        self = t
    }
}

// MARK: - Scalar conversions (bit exact, little-endian storage)

@inline(__always) func halfToFloat(_ h: UInt16) -> Float {
    let sign = UInt32(h & 0x8000) << 16
    let exp = Int((h >> 10) & 0x1F)
    let mant = UInt32(h & 0x3FF)
    if exp == 0x1F { return Float(bitPattern: sign | 0x7F80_0000 | (mant << 13)) }
    if exp == 0 {
        if mant == 0 { return Float(bitPattern: sign) }
        let v = Float(mant) * Float(bitPattern: 0x3380_0000)  // mant * 2^-24
        return sign != 0 ? -v : v
    }
    return Float(bitPattern: sign | (UInt32(exp + 112) << 23) | (mant << 13))
}

@inline(__always) func bfloat16ToFloat(_ b: UInt16) -> Float { Float(bitPattern: UInt32(b) << 16) }

/// float8_e4m3fn: bias 7, no infinities, S.1111.111 is NaN.
@inline(__always) func float8E4M3ToFloat(_ x: UInt8) -> Float {
    let neg = x & 0x80 != 0
    let exp = Int((x >> 3) & 0xF), mant = Int(x & 7)
    let v: Float
    if exp == 15 && mant == 7 { v = .nan }
    else if exp == 0 { v = Float(mant) * 0x1p-9 }
    else { v = Float(8 + mant) * Float(sign: .plus, exponent: exp - 10, significand: 1) }
    return neg ? -v : v
}

/// float8_e5m2: the top byte of an IEEE half.
@inline(__always) func float8E5M2ToFloat(_ x: UInt8) -> Float { halfToFloat(UInt16(x) << 8) }

/// float8_e8m0fnu: unsigned power of two 2^(x-127), 0xFF is NaN.
@inline(__always) func float8E8M0ToFloat(_ x: UInt8) -> Float {
    x == 0xFF ? .nan : Float(sign: .plus, exponent: Int(x) - 127, significand: 1)
}

/// Converts `count` contiguous little-endian elements of `dtype` at `src` into Floats.
func convertToFloat(_ dtype: StorageDType, _ src: UnsafeRawPointer, count: Int,
                    into dst: UnsafeMutablePointer<Float>) throws {
    switch dtype {
    case .F32:
        for i in 0..<count { dst[i] = Float(bitPattern: UInt32(littleEndian: src.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self))) }
    case .F64:
        for i in 0..<count { dst[i] = Float(Double(bitPattern: UInt64(littleEndian: src.loadUnaligned(fromByteOffset: 8 * i, as: UInt64.self)))) }
    case .F16:
        for i in 0..<count { dst[i] = halfToFloat(UInt16(littleEndian: src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))) }
    case .BF16:
        for i in 0..<count { dst[i] = bfloat16ToFloat(UInt16(littleEndian: src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))) }
    case .I64:
        for i in 0..<count { dst[i] = Float(Int64(littleEndian: src.loadUnaligned(fromByteOffset: 8 * i, as: Int64.self))) }
    case .U64:
        for i in 0..<count { dst[i] = Float(UInt64(littleEndian: src.loadUnaligned(fromByteOffset: 8 * i, as: UInt64.self))) }
    case .I32:
        for i in 0..<count { dst[i] = Float(Int32(littleEndian: src.loadUnaligned(fromByteOffset: 4 * i, as: Int32.self))) }
    case .U32:
        for i in 0..<count { dst[i] = Float(UInt32(littleEndian: src.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self))) }
    case .I16:
        for i in 0..<count { dst[i] = Float(Int16(littleEndian: src.loadUnaligned(fromByteOffset: 2 * i, as: Int16.self))) }
    case .U16:
        for i in 0..<count { dst[i] = Float(UInt16(littleEndian: src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))) }
    case .I8:
        for i in 0..<count { dst[i] = Float(Int8(bitPattern: src.load(fromByteOffset: i, as: UInt8.self))) }
    case .U8:
        for i in 0..<count { dst[i] = Float(src.load(fromByteOffset: i, as: UInt8.self)) }
    case .BOOL:
        for i in 0..<count { dst[i] = src.load(fromByteOffset: i, as: UInt8.self) != 0 ? 1 : 0 }
    case .F8_E4M3:
        for i in 0..<count { dst[i] = float8E4M3ToFloat(src.load(fromByteOffset: i, as: UInt8.self)) }
    case .F8_E5M2:
        for i in 0..<count { dst[i] = float8E5M2ToFloat(src.load(fromByteOffset: i, as: UInt8.self)) }
    case .F8_E8M0:
        for i in 0..<count { dst[i] = float8E8M0ToFloat(src.load(fromByteOffset: i, as: UInt8.self)) }
    case .C64:
        throw CheckpointError("cannot convert complex dtype C64 to Float")
    }
}
