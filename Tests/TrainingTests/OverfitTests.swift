import Diffusion
import Foundation
import TensorCore
import UNetModels
import XCTest
@testable import Training

// Overfitting a tiny pixel-space UNet (diffusers UNet2DModel layout, 2 levels of 16/32 channels, class-conditional)
// on 4 fixed 8x8 patterns, as a sanity check that the whole training step (q_sample, eps loss, backward through the
// UNet, AdamW, clipping) learns: CompVis' "overfit a single batch" debugging practice.

let overfitUNetConfig = #"""
{"_class_name": "UNet2DModel", "in_channels": 3, "out_channels": 3, "block_out_channels": [16, 32], "layers_per_block": 1,
 "down_block_types": ["DownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "UpBlock2D"],
 "norm_num_groups": 8, "num_class_embeds": 4}
"""#

final class OverfitTests: XCTestCase {
    /// Four deterministic 8x8 RGB patterns in [-1, 1]: stripes, checkerboard, a gradient, a centred square.
    static func patterns() -> Tensor {
        var v = [Float]()
        for k in 0..<4 {
            for c in 0..<3 {
                for y in 0..<8 {
                    for x in 0..<8 {
                        let on: Bool
                        switch k {
                        case 0: on = x % 2 == 0
                        case 1: on = (x + y) % 2 == 0
                        case 2: on = x + y + c >= 7
                        default: on = (2..<6).contains(x) && (2..<6).contains(y)
                        }
                        v.append(on ? (c == k % 3 ? 1 : 0.5) : -1)
                    }
                }
            }
        }
        return Tensor(v, shape: [4, 3, 8, 8])
    }

    /// The eps loss at fixed timesteps (spread over 0..<1000) and fixed noise, every image at every timestep.
    func evalLoss(_ model: UNet2DConditionModel, _ loss: DiffusionLoss, _ x0: Tensor) throws -> Float {
        let g = TorchGenerator(seed: 99)
        var total: Float = 0
        let ts: [Int64] = [20, 150, 300, 500, 700, 900]
        for t in ts {
            let noise = Tensor.randn(x0.shape, generator: g)
            total += try GradMode.noGrad {
                try loss.pLosses(model: model, x0: x0, conditioning: .classLabels([0, 1, 2, 3]), timesteps: Array(repeating: t, count: 4), noise: noise).item
            }
        }
        return total / Float(ts.count)
    }

    func testTinyUNetOverfitsFourImages() throws {
        let run = try tempDirectory("overfit")
        defer { try? FileManager.default.removeItem(at: run) }
        let model = try UNet2DConditionModel.random(config: UNetConfig.decode(Data(overfitUNetConfig.utf8)), seed: 1)
        let x0 = Self.patterns()
        let dataset = try TensorDataset(images: x0, labels: [0, 1, 2, 3], classCount: 4)
        let loss = try DiffusionLoss(schedule: NoiseSchedule(schedule: .scaledLinear, betaStart: 0.00085, betaEnd: 0.012, precision: .float64))
        let steps = 150
        var options = TrainerOptions(learningRate: 2e-3, batchSize: 4, maxSteps: steps, checkpointEvery: 10_000, seed: 7)
        options.emaDecay = nil
        options.weightDecay = 0
        let trainer = try Trainer(model: model, loss: loss, dataset: dataset, options: options, runDir: run)
        let start = Date()
        let before = try evalLoss(model, loss, x0)
        var losses: [Float] = []
        for _ in 0..<steps { losses.append(try trainer.trainStep().loss) }
        let after = try evalLoss(model, loss, x0)
        let lastMean = losses.suffix(20).reduce(0, +) / 20
        let firstMean = losses.prefix(5).reduce(0, +) / 5
        print(String(format: "overfit: eval loss %.4f -> %.4f, train loss first 5 %.4f, last 20 %.4f, %d steps in %.1f s",
                     before, after, firstMean, lastMean, steps, Date().timeIntervalSince(start)))
        XCTAssertTrue(losses.allSatisfy(\.isFinite))
        // Measured (seeded, so fixed): eval 1.232 -> 0.176, train loss 1.076 -> 0.158 after 150 steps (~19 s debug
        // build, 2 cores). Why 0.25: a model that learned only the per-pixel mean and variance of the 4 images (the
        // optimal Gaussian eps predictor, a * var / (a * var + 1 - a) per pixel) scores 0.370 on this eval set,
        // 0.30 of the initial loss; 0.25 (0.31) is only reached by using the images themselves (class -> pattern),
        // and untrained or diverging training stays near 1.2.
        XCTAssertLessThan(after, 0.25 * before)
        // The training loss (random t, random noise) must have fallen too: below 30% of its first steps.
        XCTAssertLessThan(lastMean, 0.3 * firstMean)
    }
}
