import Foundation
import XCTest
@testable import TensorCore

// Tensor.gradients(wrt:retainGraph:) (torch.autograd.grad) and the ops added for the GAN / LPIPS losses
// (max_pool2d, leaky_relu, softplus), checked against closed forms and central differences.

final class AutogradGradTests: XCTestCase {
    func testGradientsMatchClosedFormAndLeaveGradAlone() {
        // a = w * x, l1 = sum(a^2), l2 = sum(3a): dl1/dw = 2 w x^2, dl2/dw = 3x, dl1/dx = 2 w^2 x.
        let w = Tensor([1, -2, 3], shape: [3]).requiringGrad()
        let x = Tensor([0.5, 4, -1], shape: [3]).requiringGrad()
        let a = w * x
        let l1 = a.square().sum(), l2 = (a * 3).sum()
        let g = l1.gradients(wrt: [w, x], retainGraph: true)
        XCTAssertEqual(g[0].toArray(), [0.5, -64, 6])
        XCTAssertEqual(g[1].toArray(), [1, 32, -18])
        XCTAssertNil(w.grad); XCTAssertNil(x.grad)
        // The graph was kept: a second call and a full backward through the shared `a` still work.
        XCTAssertEqual(l2.gradients(wrt: [w], retainGraph: true)[0].toArray(), [1.5, 12, -3])
        XCTAssertNotNil(a.gradFn)
        (l1 + l2).backward()
        XCTAssertEqual(w.grad!.toArray(), [0.5 + 1.5, -64 + 12, 6 - 3])
    }

    func testGradientsWithoutRetainFreeTheWalkedGraphOnly() {
        let w = Tensor([2, 3], shape: [2]).requiringGrad()
        let u = Tensor([1, 1], shape: [2]).requiringGrad()
        let a = w * w           // reaches w
        let b = u * 5           // does not reach w: neither walked nor freed
        let l = (a + b).sum()
        XCTAssertEqual(l.gradients(wrt: [w])[0].toArray(), [4, 6])
        XCTAssertNil(a.gradFn)
        XCTAssertNotNil(b.gradFn)
        // A tensor the output does not depend on gets zeros.
        let unused = Tensor([1, 2, 3], shape: [3]).requiringGrad()
        XCTAssertEqual((w * 2).sum().gradients(wrt: [unused])[0].toArray(), [0, 0, 0])
    }

    func testGradientsWrtIntermediateAndItsInputs() {
        // wrt both a non-leaf (a) and the leaf under it (w): d l/d a = 2a, d l/d w = 2a * 2w.
        let w = Tensor([1, 2], shape: [2]).requiringGrad()
        let a = w * w
        let l = a.square().sum()
        let g = l.gradients(wrt: [a, w], retainGraph: true)
        XCTAssertEqual(g[0].toArray(), [2, 8])
        XCTAssertEqual(g[1].toArray(), [4, 32])
    }

    func testMaxPoolLeakyReLUSoftplus() {
        // max_pool2d 2x2: values and the gradient routed to each window's (first) maximum.
        let x = Tensor([1, 5, 2, 0,
                        3, 4, 2, 2,
                        -1, -2, 7, 7,
                        -3, -4, 7, 1], shape: [1, 1, 4, 4]).requiringGrad()
        let y = x.maxPool2d(kernel: 2, stride: 2)
        XCTAssertEqual(y.toArray(), [5, 2, -1, 7])
        (y * Tensor([1, 2, 3, 4], shape: [1, 1, 2, 2])).sum().backward()
        XCTAssertEqual(x.grad!.toArray(), [0, 1, 2, 0, 0, 0, 0, 0, 3, 0, 4, 0, 0, 0, 0, 0])

        let v = Tensor([-2, -0.5, 0, 0.5, 3, 25], shape: [6]).requiringGrad()
        let lr = v.leakyReLU(0.2)
        XCTAssertEqual(lr.toArray(), [-0.4, -0.1, 0, 0.5, 3, 25].map { Float($0) })
        lr.sum().backward()
        XCTAssertEqual(v.grad!.toArray(), [0.2, 0.2, 0.2, 1, 1, 1])   // leaky_relu_backward: slope where x <= 0

        v.zeroGrad()
        let sp = v.softplus()
        let want = v.toArray().map { $0 > 20 ? $0 : Float(Foundation.log1p(Foundation.exp(Double($0)))) }
        for (a, b) in zip(sp.toArray(), want) { XCTAssertEqual(a, b, accuracy: 1e-6) }
        sp.sum().backward()
        let dwant = v.toArray().map { $0 > 20 ? 1 : Float(1 / (1 + Foundation.exp(-Double($0)))) }
        for (a, b) in zip(v.grad!.toArray(), dwant) { XCTAssertEqual(a, b, accuracy: 1e-6) }
    }
}
