import Foundation
import TensorCore
import XCTest
@testable import Training

// AdamW + clip_grad_norm_ + LitEma against torch (Fixtures/adamw.safetensors), LR multipliers against diffusers
// get_scheduler (Fixtures/lr_schedules.json), gradient accumulation against one full batch.

final class OptimizerTests: XCTestCase {
    func testAdamWClippingAndEmaMatchTorch() throws {
        let f = try fixtureTensors("adamw.safetensors")
        let names = ["a", "b", "c"]
        let params = try names.map { ($0, try XCTUnwrap(f["init.\($0)"]).copied()) }
        let opt = try AdamW(parameters: params, lr: 0.05, betas: (0.9, 0.99), eps: 1e-8, weightDecay: 0.1)
        let ema = try LitEma(parameters: params, decay: 0.9)
        var worst: Float = 0
        for step in 0..<3 {
            for (n, p) in params { p.grad = try XCTUnwrap(f["grad\(step).\(n)"]).copied() }
            let norm = clipGradNorm(params.map(\.1), maxNorm: 1)
            worst = max(worst, assertClose([norm], try XCTUnwrap(f["norm\(step)"]).toArray(), tol: 1e-6, "norm \(step)"))
            opt.step()
            ema.update(params)
            for (n, p) in params {
                worst = max(worst, assertClose(p.toArray(), try XCTUnwrap(f["param\(step).\(n)"]).toArray(), tol: 1e-6, "param \(step) \(n)"))
                worst = max(worst, assertClose(try XCTUnwrap(opt.expAvg[n]).toArray(), try XCTUnwrap(f["exp_avg\(step).\(n)"]).toArray(), tol: 1e-6, "exp_avg \(step) \(n)"))
                worst = max(worst, assertClose(try XCTUnwrap(opt.expAvgSq[n]).toArray(), try XCTUnwrap(f["exp_avg_sq\(step).\(n)"]).toArray(), tol: 1e-6, "exp_avg_sq \(step) \(n)"))
                worst = max(worst, assertClose(try XCTUnwrap(ema.shadow[n]).toArray(), try XCTUnwrap(f["ema\(step).\(n)"]).toArray(), tol: 1e-6, "ema \(step) \(n)"))
            }
        }
        XCTAssertEqual(opt.stepCount, 3)
        print("AdamW/clip/LitEma parity: max rel err \(worst)")
    }

    func testLRSchedulesMatchDiffusers() throws {
        let json = try JSONSerialization.jsonObject(with: Data(contentsOf: fixturesURL.appendingPathComponent("lr_schedules.json"))) as? [String: [String: Any]]
        let cases = try XCTUnwrap(json)
        XCTAssertEqual(cases.count, 3)
        for (name, c) in cases {
            let warmup = try XCTUnwrap(c["num_warmup_steps"] as? Int), total = c["num_training_steps"] as? Int ?? 0
            let lrs = try XCTUnwrap(c["lrs"] as? [Double])
            let schedule = try LRSchedule(name: name, warmup: warmup, total: total)
            for (step, ref) in lrs.enumerated() {
                XCTAssertEqual(schedule.multiplier(step: step), ref, accuracy: 1e-12, "\(name) step \(step)")
            }
        }
        XCTAssertThrowsError(try LRSchedule(name: "polynomial", warmup: 0, total: 1))
    }

    func testGradientAccumulationEqualsFullBatch() throws {
        let w = Tensor.randn([3, 4], generator: TorchGenerator(seed: 3)).requiringGrad()
        let x = Tensor.randn([4, 4], generator: TorchGenerator(seed: 4))
        let y = Tensor.randn([4, 3], generator: TorchGenerator(seed: 5))
        mseLoss(linear(x, w, nil), y).backward()
        let full = try XCTUnwrap(w.grad).toArray()
        w.zeroGrad()
        for i in 0..<2 {   // two micro-batches of 2, loss divided by the number of micro-batches
            (mseLoss(linear(x.narrow(0, 2 * i, 2), w, nil), y.narrow(0, 2 * i, 2)) / 2).backward()
        }
        assertClose(try XCTUnwrap(w.grad).toArray(), full, tol: 1e-6, "accumulated grad")
    }

    func testRejectsBadHyperParameters() {
        let p = [("w", Tensor(zeros: [2]))]
        XCTAssertThrowsError(try AdamW(parameters: p, lr: -1))
        XCTAssertThrowsError(try AdamW(parameters: p, betas: (1.0, 0.9)))
        XCTAssertThrowsError(try LitEma(parameters: p, decay: 1.5))
    }
}
