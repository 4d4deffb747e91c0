// Widening 16-bit storage to float32 (`Tensor.float32()`, what float32 compute does per call with weights held in
// bf16 or f16): the vectorised contiguous path gives exactly Swift's own conversions for every bit pattern.
import TensorCore
import XCTest

final class WidenTests: XCTestCase {
    func testEveryHalfAndBFloat16BitPatternWidensExactly() {
        let n = 1 << 16 + 5 // odd length: the scalar tail runs too
        for dtype in [DType.float16, .bfloat16] {
            let t = Tensor(storage: Storage(byteCount: n * 2), shape: [n], dtype: dtype)
            let bits = t.storage.base.assumingMemoryBound(to: UInt16.self)
            for i in 0..<n { bits[i] = UInt16(truncatingIfNeeded: i) }
            let got = t.float32().toArray()
            for i in 0..<n {
                let b = UInt16(truncatingIfNeeded: i)
                let want = dtype == .float16 ? Float(Float16(bitPattern: b)) : Float(bitPattern: UInt32(b) << 16)
                if want.isNaN { XCTAssertTrue(got[i].isNaN, "\(dtype) \(b)") }
                else { XCTAssertEqual(got[i].bitPattern, want.bitPattern, "\(dtype) 0x\(String(b, radix: 16))") }
            }
            // A view at an offset, and a transposed one (the row-by-row path): the same values.
            XCTAssertEqual(t.narrow(0, 1, 4000).float32().toArray().map(\.bitPattern), Array(got[1..<4001]).map(\.bitPattern))
            let square = t.narrow(0, 0, 4096).reshaped([64, 64]).permuted([1, 0]).float32().toArray()
            for r in 0..<64 { for c in 0..<64 { XCTAssertEqual(square[r * 64 + c].bitPattern, got[c * 64 + r].bitPattern) } }
        }
    }

    /// float16 -> bfloat16 (an f16 file's weights held in bf16) in blocks: the bits of the conversion through float32.
    func testHalfToBFloat16EqualsTheConversionThroughFloat32() {
        let n = 1 << 16 + 4099
        let t = Tensor(storage: Storage(byteCount: n * 2), shape: [n], dtype: .float16)
        let bits = t.storage.base.assumingMemoryBound(to: UInt16.self)
        for i in 0..<n { bits[i] = UInt16(truncatingIfNeeded: i &* 40503) }
        let direct = t.to(.bfloat16), viaFloat32 = t.float32().to(.bfloat16)
        XCTAssertEqual(direct.dtype, .bfloat16)
        let a = direct.storage.base.assumingMemoryBound(to: UInt16.self), b = viaFloat32.storage.base.assumingMemoryBound(to: UInt16.self)
        XCTAssertEqual((0..<n).filter { a[$0] != b[$0] }.count, 0)
    }
}
