import XCTest
@testable import TensorCore

// Finite-difference checks of every op's backward, on the same cases as the PyTorch fixtures: for a sample of
// input elements, (L(x + h) - L(x - h)) / 2h with L = sum(op(x) * R) against the analytic gradient.
// Tolerance: float32 central differences with h = 1e-2 carry O(h^2) truncation and ~1e-7 * |L| / h rounding
// error; 2e-2 * max(1, |g|) covers both for these sizes while still catching a wrong formula (errors are O(1)).

final class GradientCheckTests: XCTestCase {
    func testEveryOpAgainstFiniteDifferences() throws {
        let fixture = try Fixture.load("ops.json")
        for c in fixture.cases {
            let base = c.inputs.mapValues { $0.tensor }
            let r = c.r.tensor
            func loss(_ inputs: [String: Tensor]) -> Float {
                GradMode.noGrad { Float((applyFixtureOp(c, inputs) * r).sum().item) }
            }
            let params = base.mapValues { Tensor($0.toArray(), shape: $0.shape).requiringGrad() }
            (applyFixtureOp(c, params) * r).sum().backward()
            for (name, x) in base {
                guard let g = params[name]?.grad?.toArray() else { XCTFail("\(c.name): no grad for \(name)"); continue }
                let values = x.toArray()
                // A deterministic sample of up to 12 elements per input.
                let stride = max(1, values.count / 12)
                for i in Swift.stride(from: 0, to: values.count, by: stride) {
                    let h: Float = 1e-2
                    var plus = values, minus = values
                    plus[i] += h; minus[i] -= h
                    var ip = base, im = base
                    ip[name] = Tensor(plus, shape: x.shape); im[name] = Tensor(minus, shape: x.shape)
                    let numeric = (loss(ip) - loss(im)) / (2 * h)
                    // Skip points within h of a kink, where a central difference straddles two slopes.
                    let kinkDistance = c.name == "l1" ? abs(base["a"]!.toArray()[i] - base["b"]!.toArray()[i])
                        : c.name == "clamp" ? min(abs(values[i] + 0.5), abs(values[i] - 0.7)) : abs(values[i])
                    if ["abs", "clamp", "l1"].contains(c.name) && kinkDistance < 2 * h { continue }
                    XCTAssertEqual(g[i], numeric, accuracy: 2e-2 * max(1, abs(numeric)), "\(c.name) d/d\(name)[\(i)]")
                }
            }
        }
    }
}

final class AutogradTests: XCTestCase {
    func testNoGradRecordsNothing() {
        let w = Tensor([1, 2, 3], shape: [3]).requiringGrad()
        let y = GradMode.noGrad { (w * w).sum() }
        XCTAssertFalse(y.requiresGrad)
        XCTAssertNil(y.gradFn)
        let z = (w * w).sum()
        XCTAssertNotNil(z.gradFn)
    }

    func testGradientsAccumulateAndZero() {
        let w = Tensor([1, 2, 3], shape: [3]).requiringGrad()
        (w * w).sum().backward()
        (w * 3).sum().backward()
        XCTAssertEqual(w.grad!.toArray(), [2 + 3, 4 + 3, 6 + 3])
        w.zeroGrad()
        XCTAssertNil(w.grad)
    }

    func testSharedSubexpressionAndViews() {
        // y = sum((x^T x)) with x used twice through a transposed view.
        let x = Tensor([1, 2, 3, 4, 5, 6], shape: [2, 3]).requiringGrad()
        let y = matmul(x.transposed(), x).sum()
        y.backward()
        // d/dx sum(x^T x) = x @ (ones + ones^T) = 2 * x @ ones(3,3): each row gets 2 * rowsum.
        XCTAssertEqual(x.grad!.toArray(), [12, 12, 12, 30, 30, 30])
        XCTAssertEqual(y.item, 6 * 6 + 15 * 15) // sum(x^T x) = sum of squared row sums
    }

    func testBFloat16RoundTripIsRoundToNearestEven() {
        let x = Tensor([1.0, 1.00390625, 1.01171875, -3.14159, 65504, .infinity], shape: [6])
        let b = x.to(.bfloat16)
        XCTAssertEqual(b.dtype, .bfloat16)
        // 1 + 2^-8 is a tie between 1 and 1 + 2^-7: even mantissa wins (1.0); 1 + 3*2^-8 rounds up to 1 + 2^-6.
        XCTAssertEqual(b.float32().toArray(), [1.0, 1.0, 1.015625, -3.140625, 65536, .infinity])
    }

    func testViewsShareStorageAndContiguousCopies() {
        let x = Tensor((0..<24).map(Float.init), shape: [2, 3, 4])
        let p = x.permuted([2, 0, 1])
        XCTAssertFalse(p.isContiguous)
        XCTAssertEqual(p.shape, [4, 2, 3])
        XCTAssertEqual(p.contiguous().toArray()[0..<6], [0, 4, 8, 12, 16, 20])
        let n = x.narrow(2, 1, 2)
        XCTAssertEqual(n.toArray()[0..<4], [1, 2, 5, 6])
        XCTAssertTrue(n.storage === x.storage)
        let e = Tensor([1, 2], shape: [2, 1]).expanded(to: [2, 3])
        XCTAssertEqual(e.toArray(), [1, 1, 1, 2, 2, 2])
    }
}
