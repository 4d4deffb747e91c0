// A LoRA written by `ldm train lora` (Fixtures/lora/trained.safetensors, kohya format: UNet attention, proj_in/out,
// feed-forward and text-encoder modules) against diffusers 0.42: tools/fixtures/lora_trained.py loads the same file
// with load_lora_weights + fuse_lora (checking every fused weight delta) and renders the tiny SD model with it; our
// strict loader must place every key and give the same images (Euler a, 3 steps, seed 70; PSNR >= 45 dB as the other
// LoRA parity cases) at LoRA weights 1.0 and 0.6.
import Checkpoints
import Foundation
import Pipelines
import TensorCore
import XCTest

final class LoRATrainedTests: XCTestCase {
    struct Case: Decodable { let name: String; let lora: String; let weight: Float; let prompt: String; let sampler: String; let steps: Int; let cfg: Double; let seed: UInt64 }
    struct Doc: Decodable { let cases: [Case]; let modules: Int }
    let dir = fixtures.appendingPathComponent("lora")

    func generate(_ bundle: ModelBundle, _ c: Case) throws -> [UInt8] {
        let pipe = try StableDiffusionPipeline(bundle: bundle)
        return try pipe.textToImage(PromptOptions(prompt: c.prompt, guidanceScale: c.cfg, width: 16, height: 16),
                                    SamplingOptions(sampler: c.sampler, steps: c.steps), generator: TorchGenerator(seed: c.seed)).images[0].pixels
    }

    func reference(_ name: String) throws -> [UInt8] {
        let f = try CheckpointFile.open(dir.appendingPathComponent("trained_outputs.safetensors"))
        return try XCTUnwrap(f.tensors[name]).floats().map { UInt8((min(max($0, 0), 1) * 255).rounded(.toNearestOrEven)) }
    }

    func testTrainedLoRAMatchesDiffusers() throws {
        let doc = try JSONDecoder().decode(Doc.self, from: Data(contentsOf: dir.appendingPathComponent("trained_cases.json")))
        XCTAssertEqual(doc.cases.count, 2)
        let bundle = try ModelBundle.load(fixtures.appendingPathComponent("tiny-sd"))
        let base = try generate(bundle, doc.cases[0])
        XCTAssertGreaterThanOrEqual(psnr(base, try reference("base")), 45, "base image")
        for c in doc.cases {
            let file = try LoRAFile(url: dir.appendingPathComponent(c.lora))
            XCTAssertEqual(file.metadata["ss_network_module"], "networks.lora")
            let applied = try bundle.mergeLoRAs([(file, c.weight)])
            XCTAssertEqual(applied.changedParameters.count, doc.modules)
            XCTAssertTrue(applied.changedParameters.contains { $0.hasPrefix("text_encoder.") })
            XCTAssertTrue(applied.changedParameters.contains { $0.hasSuffix("proj_in.weight") })
            let image = try generate(bundle, c)
            let db = psnr(image, try reference(c.name))
            print("PSNR \(c.name): \(db) dB")
            XCTAssertGreaterThanOrEqual(db, 45, c.name)
            XCTAssertLessThan(psnr(image, base), 40, "the trained LoRA changes the image (\(c.name))")
            bundle.unmergeLoRAs()
        }
    }
}
