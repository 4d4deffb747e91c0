// The models shipped in models/ (trained by `ldm train`, see docs/results.md) load strictly and generate, offline.
// Their quality is judged by tools/eval/*.py (Python); here: every weight is used, generation is deterministic per
// seed, and different classes / prompts give different images.
import Foundation
import Imaging
import Pipelines
import TensorCore
import XCTest

let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

final class ShippedModelsTests: XCTestCase {
    func testDigitsModelSamplesEachClass() throws {
        let bundle = try ModelBundle.load(repositoryRoot.appendingPathComponent("models/digits"))
        XCTAssertEqual(bundle.unet.config.numClassEmbeds, 11)
        XCTAssertEqual(bundle.defaultImageSize, 32)
        let pipe = LatentDiffusionPipeline(bundle: bundle)
        let o = SamplingOptions(sampler: "ddim", steps: 10, batchSize: 1)
        func sample(_ k: Int, seed: UInt64) throws -> [Float] {
            try pipe.sample(o, classLabel: k, guidanceScale: 3, generator: TorchGenerator(seed: seed)).decoded
        }
        let seven = try sample(7, seed: 1)
        XCTAssertEqual(seven.count, 3 * 32 * 32)
        XCTAssertEqual(seven, try sample(7, seed: 1))
        XCTAssertNotEqual(seven, try sample(1, seed: 1))
        // Digits are light ink on a dark background: the image is neither blank nor saturated.
        let mean = seven.reduce(0, +) / Float(seven.count)
        XCTAssertTrue((-0.95 ... 0.2).contains(mean), "mean \(mean)")
        XCTAssertGreaterThan(seven.max() ?? 0, 0.3)
        XCTAssertThrowsError(try pipe.sample(o, classLabel: 11, generator: TorchGenerator(seed: 1)))
    }

    func testShapesModelFollowsPrompts() throws {
        let bundle = try ModelBundle.load(repositoryRoot.appendingPathComponent("models/shapes"))
        let pipe = try StableDiffusionPipeline(bundle: bundle)
        let o = SamplingOptions(sampler: "ddim", steps: 10, batchSize: 1)
        func image(_ prompt: String) throws -> [Float] {
            try pipe.textToImage(PromptOptions(prompt: prompt, guidanceScale: 4), o, generator: TorchGenerator(seed: 3)).decoded
        }
        let red = try image("a large red circle in the center on a white background")
        XCTAssertEqual(red.count, 3 * 32 * 32)
        XCTAssertEqual(red, try image("a large red circle in the center on a white background"))
        XCTAssertNotEqual(red, try image("a large blue square in the top left corner on a white background"))
        // White background: most pixels are near 1 in every channel; the red shape makes the red channel dominate
        // where it is drawn.
        let n = 32 * 32
        let white = (0..<n).filter { i in red[i] > 0.7 && red[n + i] > 0.7 && red[2 * n + i] > 0.7 }.count
        XCTAssertGreaterThan(white, n / 2)
        let reddish = (0..<n).filter { i in red[i] > 0.3 && red[n + i] < 0 && red[2 * n + i] < 0 }.count
        XCTAssertGreaterThan(reddish, 10)
    }
}
