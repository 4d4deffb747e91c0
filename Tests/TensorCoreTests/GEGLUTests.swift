import XCTest
@testable import TensorCore

// The fused GEGLU against its definition, hidden * gelu(gate) from chunk(2) (whose gelu and product are checked
// against PyTorch in OpParityTests): values and gradients, with row widths that leave a vector remainder.
final class GEGLUTests: XCTestCase {
    func testFusedGEGLUEqualsChunkGELUProduct() {
        let g = TorchGenerator(seed: 3)
        for shape in [[2, 5, 2 * 13], [3, 2 * 64], [1, 2, 3, 2 * 8]] {
            let x0 = Tensor.randn(shape, generator: g) * 2
            let upstream = Tensor.randn(Array(shape.dropLast()) + [shape.last! / 2], generator: g)
            func run(_ f: (Tensor) -> Tensor) -> ([Float], [Float]) {
                let x = Tensor(x0.toArray(), shape: shape).requiringGrad()
                let y = f(x)
                (y * upstream).sum().backward()
                return (y.toArray(), x.grad!.toArray())
            }
            let (y, gx) = run { $0.geglu() }
            let (yr, gxr) = run { x in let p = x.chunk(2, axis: -1); return p[0] * p[1].gelu() }
            XCTAssertEqual(y, yr, accuracy: 1e-6)
            XCTAssertEqual(gx, gxr, accuracy: 1e-5)
        }
    }
}
