import XCTest
@testable import TensorCore

// groupNorm(adding:) (a resnet's time embedding added before norm2) against the broadcast sum it stands for: the
// same float32 sums, so the same bits, for a shift per image and one shared by the batch.
final class GroupNormShiftTests: XCTestCase {
    func testShiftEqualsTheBroadcastSum() {
        let g = TorchGenerator(seed: 31)
        let x = Tensor.randn([2, 12, 5, 7], generator: g), w = Tensor.randn([12], generator: g), b = Tensor.randn([12], generator: g)
        for shift in [Tensor.randn([2, 12], generator: g), Tensor.randn([1, 12], generator: g)] {
            for silu in [false, true] {
                let ref = GradMode.noGrad { (x + shift.reshaped([shift.shape[0], 12, 1, 1])).groupNorm(groups: 3, weight: w, bias: b, silu: silu) }
                let y = GradMode.noGrad { x.groupNorm(groups: 3, weight: w, bias: b, silu: silu, adding: shift) }
                XCTAssertEqual(y.toArray(), ref.toArray(), "shift \(shift.shape), silu \(silu)")
            }
        }
    }
}
