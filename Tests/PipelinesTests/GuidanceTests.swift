// Classifier-free guidance in one batch of 2 (diffusers: noise_pred_uncond + s * (noise_pred_text - noise_pred_uncond))
// equals the same combination of two separate UNet calls; for class-conditional models the unconditional input is
// the null class n - 1 (CompVis cin models' unconditional label).
import Diffusion
import Foundation
import NeuralNetwork
import Pipelines
import TensorCore
import UNetModels
import XCTest

final class GuidanceTests: XCTestCase {
    func maxDiff(_ a: [Float], _ b: [Float]) -> Float { zip(a, b).map { abs($0 - $1) }.max() ?? .infinity }

    func testTextGuidanceIsOneBatchOfTwo() throws {
        let sd = try Shared.sd.get()
        let pipe = try StableDiffusionPipeline(bundle: sd)
        let (cond, uncond) = try pipe.encodePrompt(PromptOptions(prompt: "a cat", negativePrompt: "the dog"), batch: 1, guidance: true)
        let u = try XCTUnwrap(uncond)
        let scheduler = try SamplingOptions(sampler: "euler", steps: 4).makeScheduler(config: sd.schedulerConfig)
        let shape = [1, 4, 8, 8]
        let x = Tensor.randn(shape, generator: TorchGenerator(seed: 3))
        let guided = try Denoiser(unet: sd.unet, guidanceScale: 6, context: cond, uncondContext: u)
            .predict(x, scheduler: scheduler, stepIndex: 1).toArray()
        let c = try Denoiser(unet: sd.unet, context: cond).predict(x, scheduler: scheduler, stepIndex: 1).toArray()
        let n = try Denoiser(unet: sd.unet, context: u).predict(x, scheduler: scheduler, stepIndex: 1).toArray()
        let manual = zip(n, c).map { $0 + 6 * ($1 - $0) }
        XCTAssertLessThan(maxDiff(guided, manual), 1e-4)
        XCTAssertGreaterThan(maxDiff(c, n), 1e-3)   // the negative prompt changes the prediction
    }

    func testNullClassGuidance() throws {
        let json = """
        {"_class_name": "UNet2DModel", "in_channels": 3, "out_channels": 3, "block_out_channels": [8, 16],
         "layers_per_block": 1, "down_block_types": ["DownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "UpBlock2D"],
         "norm_num_groups": 4, "num_class_embeds": 5, "sample_size": 8}
        """
        let unet = try UNet2DModel(configData: Data(json.utf8))
        initializeParameters(unet, generator: TorchGenerator(seed: 1))
        let ldm = try Shared.ldm.get()
        let bundle = ModelBundle(url: ldm.url, unet: unet, firstStage: ldm.firstStage, textEncoder: nil, tokenizer: nil,
                                 schedulerConfig: ldm.schedulerConfig, sampleSize: 8)
        let scheduler = try SamplingOptions(sampler: "ddim", steps: 2).makeScheduler(config: ldm.schedulerConfig)
        let shape = [2, 3, 8, 8]
        let x = Tensor.randn(shape, generator: TorchGenerator(seed: 2))
        let guided = try Denoiser(unet: unet, guidanceScale: 3, classLabels: [2, 2], uncondClassLabels: [4, 4])
            .predict(x, scheduler: scheduler, stepIndex: 0).toArray()
        let c = try Denoiser(unet: unet, classLabels: [2, 2]).predict(x, scheduler: scheduler, stepIndex: 0).toArray()
        let n = try Denoiser(unet: unet, classLabels: [4, 4]).predict(x, scheduler: scheduler, stepIndex: 0).toArray()
        XCTAssertLessThan(maxDiff(guided, zip(n, c).map { $0 + 3 * ($1 - $0) }), 1e-4)
        // The pipeline uses class n - 1 as the null class and needs --class for a class-conditional model.
        let pipe = LatentDiffusionPipeline(bundle: bundle)
        let r = try pipe.sample(SamplingOptions(sampler: "ddim", steps: 2, batchSize: 2), classLabel: 2, guidanceScale: 3,
                                generator: TorchGenerator(seed: 0))
        XCTAssertEqual(r.images.count, 2)
        XCTAssertEqual(r.images[0].width, 16)
        XCTAssertThrowsError(try pipe.sample(SamplingOptions(steps: 2), generator: TorchGenerator(seed: 0)))
        XCTAssertThrowsError(try pipe.sample(SamplingOptions(steps: 2), classLabel: 5, generator: TorchGenerator(seed: 0)))
    }
}
