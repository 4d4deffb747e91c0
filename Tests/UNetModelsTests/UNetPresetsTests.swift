import Foundation
import TensorCore
import XCTest
@testable import UNetModels

final class UNetPresetsTests: XCTestCase {
    /// The SD 1.5 architecture has the 859,520,964 parameters of runwayml/stable-diffusion-v1-5's UNet
    /// (2 shared cores: one forward pass at an 8x8 latent only).
    func testStableDiffusion15SmokeAt8x8() throws {
        let start = Date()
        let model = try UNet2DConditionModel.random(config: .stableDiffusion15, seed: 1)
        let built = Date()
        XCTAssertEqual(model.parameterCount, 859_520_964)
        let sample = Tensor.randn([1, 4, 8, 8], generator: TorchGenerator(seed: 2))
        let context = Tensor.randn([1, 77, 768], generator: TorchGenerator(seed: 3))
        let out = try GradMode.noGrad { try model(sample: sample, timestep: 999, encoderHiddenStates: context) }
        print("SD 1.5 UNet: build + random init \(built.timeIntervalSince(start)) s, forward at 8x8 \(Date().timeIntervalSince(built)) s")
        XCTAssertEqual(out.shape, [1, 4, 8, 8])
        XCTAssertTrue(out.toArray().allSatisfy { $0.isFinite })
    }

    func testStableDiffusion2Layout() throws {
        let config = UNetConfig.stableDiffusion2
        XCTAssertEqual(config.transformerHeads(3), 20)
        XCTAssertTrue(config.useLinearProjection)
        XCTAssertEqual(config.crossAttentionDim, [1024, 1024, 1024, 1024])
    }
}
