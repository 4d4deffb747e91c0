import XCTest
@testable import TensorCore

// TensorCore's autograd extension points (Core/Autograd.swift): GradientReadyHooks (torch's
// register_post_accumulate_grad_hook, which data-parallel training starts its all-reduce buckets from) and
// Tensor.recordingBackward (torch.autograd.Function).
final class GradientReadyHookTests: XCTestCase {
    func testTheHookSeesEachLeafOnceWithItsFinalGradient() {
        let a = Tensor([1, 2, 3], shape: [3]).requiringGrad()
        let b = Tensor([0.5, -1, 2], shape: [3]).requiringGrad()
        let unused = Tensor([4], shape: [1]).requiringGrad()
        let names = [ObjectIdentifier(a): "a", ObjectIdentifier(b): "b", ObjectIdentifier(unused): "unused"]
        a.grad = Tensor([10, 10, 10], shape: [3])   // accumulated by an earlier micro-batch
        var seen: [(String, [Float])] = []
        GradientReadyHooks.withHooks(on: [a, b, unused], { t in seen.append((names[ObjectIdentifier(t)]!, t.grad!.toArray())) }) {
            // `a` is used by two ops: the hook must come after both contributions, with their sum.
            ((a * b).sum() + (a * a).sum()).backward()
        }
        XCTAssertEqual(seen.map(\.0).sorted(), ["a", "b"], "one call per reached leaf, none for the unused one")
        XCTAssertEqual(seen.first { $0.0 == "a" }?.1, [12.5, 13, 18])   // 10 + b + 2a
        XCTAssertEqual(seen.first { $0.0 == "b" }?.1, [1, 2, 3])

        // No call from gradients(wrt:) (it leaves .grad alone), none outside the scope.
        seen = []
        GradientReadyHooks.withHooks(on: [a, b], { t in seen.append((names[ObjectIdentifier(t)]!, [])) }) {
            _ = (a * b).sum().gradients(wrt: [a, b])
        }
        (a * b).sum().backward()
        XCTAssertTrue(seen.isEmpty, "\(seen)")
        XCTAssertTrue(GradientReadyHooks.active.isEmpty)
    }

    func testRecordingBackwardAttachesACustomGradient() {
        let x = Tensor([1, -2, 3], shape: [3]).requiringGrad()
        // y = 3x computed outside autograd, with its own backward.
        let y = GradMode.noGrad { Tensor(x.toArray().map { $0 * 3 }, shape: [3]) }
            .recordingBackward("triple", inputs: [x]) { g in [g * 3] }
        XCTAssertTrue(y.requiresGrad)
        (y * y).sum().backward()
        XCTAssertEqual(x.grad?.toArray(), [18, -36, 54])   // d(9x^2)/dx
        let z = GradMode.noGrad { Tensor([1], shape: [1]).recordingBackward("none", inputs: [x]) { g in [g] } }
        XCTAssertFalse(z.requiresGrad, "nothing is recorded under noGrad")
    }
}
