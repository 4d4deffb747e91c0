// A CompVis single-file Stable Diffusion checkpoint, loaded as a downloaded SD 1.x file is (configs derived from the
// tensor shapes, SD1 defaults, the shipped OpenAI CLIP vocabulary), against diffusers' images from the same weights
// (tools/fixtures/compvis_single_file.py: tiny random SD1-shaped pipeline whose CLIP has the real 49408-token
// vocabulary). The folder is turned into the single file by CompVis.Converter (checked key for key against
// diffusers' own converters in CheckpointsTests).
import Checkpoints
import Foundation
import Pipelines
import TensorCore
import XCTest
@testable import CompVis

final class CompVisSingleFileTests: XCTestCase {
    struct Fixture: Decodable { let cases: [PipelineCase]; let token_ids: [Int] }

    func testSingleFileWithShippedCLIPVocabularyMatchesDiffusers() throws {
        let folder = fixtures.appendingPathComponent("tiny-sd-clip-vocab")
        let fx = try JSONDecoder().decode(Fixture.self, from: Data(contentsOf: folder.appendingPathComponent("cases.json")))
        let outputs = try CheckpointFile.open(folder.appendingPathComponent("outputs.safetensors")).tensors
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("ldm-cv-vocab-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let file = dir.appendingPathComponent("tiny-sd.safetensors")
        _ = try Converter.convert(input: folder, output: file, options: ConvertOptions(target: .compvis))
        XCTAssertTrue(try ModelSummary.read(file).isCompVisFile)

        let bundle = try ModelBundle.load(file)
        let tokenizer = try XCTUnwrap(bundle.tokenizer)
        XCTAssertEqual(tokenizer(fx.cases[0].prompt ?? "", maxLength: 77), fx.token_ids, "shipped vocabulary vs transformers' CLIPTokenizer")
        let pipe = try StableDiffusionPipeline(bundle: bundle)
        XCTAssertEqual(fx.cases.count, 4)
        for c in fx.cases {
            let r = try pipe.textToImage(
                PromptOptions(prompt: c.prompt ?? "", negativePrompt: c.negative_prompt ?? "", guidanceScale: c.cfg ?? 7.5,
                              width: c.width, height: c.height),
                SamplingOptions(sampler: c.sampler, steps: c.steps, eta: c.eta ?? 0, batchSize: c.batch),
                generator: TorchGenerator(seed: c.seed))
            let ours = r.images.flatMap(\.pixels)
            let ref = try XCTUnwrap(outputs[c.name]).floats().map { UInt8((min(max($0, 0), 1) * 255).rounded(.toNearestOrEven)) }
            XCTAssertEqual(ours.count, ref.count, c.name)
            guard ours.count == ref.count else { continue }
            let p = psnr(ours, ref)
            print("PSNR single file \(c.name): \(p) dB")
            XCTAssertGreaterThanOrEqual(p, 45, c.name)
        }
    }
}
