import Checkpoints
import Diffusion
import Foundation
import TensorCore
import UNetModels
import XCTest
@testable import Training

// One LatentDiffusion p_losses step against torch + diffusers (Fixtures/unet, Fixtures/loss_step.safetensors).

final class DiffusionLossTests: XCTestCase {
    func loadUNet() throws -> UNet2DConditionModel {
        let dir = fixturesURL.appendingPathComponent("unet")
        let model = try UNet2DConditionModel(configData: Data(contentsOf: dir.appendingPathComponent("config.json")))
        try model.load(CheckpointFile.open(dir.appendingPathComponent("diffusion_pytorch_model.safetensors")).tensors)
        return model
    }

    func makeLoss(_ p: Parameterization = .eps, _ l: LossType = .l2) throws -> DiffusionLoss {
        try DiffusionLoss(schedule: NoiseSchedule(schedule: .scaledLinear, trainSteps: 1000, betaStart: 0.00085, betaEnd: 0.012),
                          parameterization: p, lossType: l)
    }

    func testLossAndGradientsMatchTorch() throws {
        let io = try fixtureTensors("loss_step.safetensors")
        let model = try loadUNet()
        let raw = try XCTUnwrap(io["raw_latents"]), ctx = try XCTUnwrap(io["encoder_hidden_states"])
        let scale = try scaleFactorByStd(raw)
        assertClose([scale], try XCTUnwrap(io["scale_factor"]).toArray(), tol: 1e-6, "scale_factor")
        let x0 = raw * scale
        // Random draws: same generator, same order as the fixture (randint, then randn).
        let out = try makeLoss()(model: model, latents: x0, conditioning: .text(ctx), generator: TorchGenerator(seed: 1234))
        XCTAssertEqual(out.timesteps.map(Float.init), try XCTUnwrap(io["timesteps"]).toArray())
        XCTAssertEqual(out.noise.toArray(), try XCTUnwrap(io["noise"]).toArray())
        let qs = try makeLoss().qSample(x0: x0, timesteps: out.timesteps, noise: out.noise)
        assertClose(qs.toArray(), try XCTUnwrap(io["x_noisy"]).toArray(), tol: 1e-6, "q_sample")
        let lossErr = assertClose([out.loss.item], try XCTUnwrap(io["loss_eps_l2"]).toArray(), tol: 1e-5, "loss")
        out.loss.backward()
        let params = Dictionary(model.namedParameters, uniquingKeysWith: { a, _ in a })
        var worst: Float = 0
        let gradNames = io.keys.filter { $0.hasPrefix("grad.") }.sorted()
        XCTAssertEqual(gradNames.count, 7)
        for key in gradNames {
            let name = String(key.dropFirst(5))
            let g = try XCTUnwrap(params[name]?.grad, "no gradient for \(name)")
            worst = max(worst, assertClose(g.toArray(), try XCTUnwrap(io[key]).toArray(), tol: 1e-4, name))
        }
        print("LDM loss step parity: loss rel err \(lossErr), gradients max rel err \(worst)")
        // Other targets / losses on the same draws.
        for (p, l, key) in [(Parameterization.x0, LossType.l2, "loss_x0_l2"), (.v, .l2, "loss_v_l2"), (.eps, .l1, "loss_eps_l1")] {
            let v = try GradMode.noGrad {
                try makeLoss(p, l).pLosses(model: model, x0: x0, conditioning: .text(ctx), timesteps: out.timesteps, noise: out.noise)
            }
            assertClose([v.item], try XCTUnwrap(io[key]).toArray(), tol: 1e-5, key)
        }
    }

    func testConditioningDropout() throws {
        var loss = try makeLoss()
        loss.condDropProb = 1
        XCTAssertThrowsError(try loss.applyDropout(.classLabels([1, 2]), [true, false]))
        loss.nullClass = 9
        guard case .classLabels(let l) = try loss.applyDropout(.classLabels([1, 2, 3]), [true, false, true]) else { return XCTFail() }
        XCTAssertEqual(l, [9, 2, 9])
        let ctx = Tensor.randn([2, 3, 4], generator: TorchGenerator(seed: 1))
        loss.nullText = Tensor.full(7, [1, 3, 4])
        guard case .text(let t) = try loss.applyDropout(.text(ctx), [false, true]) else { return XCTFail() }
        XCTAssertEqual(Array(t.toArray()[0..<12]), Array(ctx.toArray()[0..<12]))
        XCTAssertEqual(Array(t.toArray()[12...]), [Float](repeating: 7, count: 12))
        loss.nullText = Tensor.full(7, [1, 2, 4])
        XCTAssertThrowsError(try loss.applyDropout(.text(ctx), [false, true]))
        // The drop mask is drawn after t and noise: torch.rand(B) < p from the same generator.
        loss.condDropProb = 0.5
        let ctx8 = Tensor.randn([2, 5, 8], generator: TorchGenerator(seed: 3))
        loss.nullText = Tensor(zeros: [1, 5, 8])
        let model = try loadUNet()
        let x0 = Tensor.randn([2, 4, 8, 8], generator: TorchGenerator(seed: 2))
        let g = TorchGenerator(seed: 7)
        _ = try g.randomInt(upperBound: 1000, count: 2); _ = g.normal(count: x0.count)
        let expected = g.uniform(count: 2).map { $0 < 0.5 }
        let out = try GradMode.noGrad { try loss(model: model, latents: x0, conditioning: .text(ctx8),
                                                generator: TorchGenerator(seed: 7)) }
        XCTAssertEqual(out.dropped, expected)
    }

    func testRejectsBadInputs() throws {
        let model = try loadUNet()
        let loss = try makeLoss()
        XCTAssertThrowsError(try loss.pLosses(model: model, x0: Tensor(zeros: [1, 4, 8, 8]), conditioning: .none, timesteps: [1000], noise: Tensor(zeros: [1, 4, 8, 8])))
        XCTAssertThrowsError(try loss.pLosses(model: model, x0: Tensor(zeros: [1, 4, 8, 8]), conditioning: .none, timesteps: [1], noise: Tensor(zeros: [1, 4, 4, 4])))
        XCTAssertThrowsError(try scaleFactorByStd(Tensor(zeros: [4])))
        XCTAssertThrowsError(try DiffusionLoss(schedule: NoiseSchedule(schedule: .linear), condDropProb: 2))
    }
}
