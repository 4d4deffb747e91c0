// Issue 15 point 4: a CompVis checkpoint loaded with the released v1-inference.yaml although its text encoder is not
// CLIP ViT-L/14 (32 wide, 2 layers) and its UNet / VAE are tiny: the sizes come from the weights
// (Conditioning/TextEncoderFromWeights.swift, Pipelines/ArchitectureFromWeights.swift), the rest (heads, schedule,
// scale factor) from the YAML, and the images equal diffusers' from the same weights (tiny-sd-clip-vocab,
// tools/fixtures/compvis_single_file.py). What the weights cannot give is refused in one sentence.
import Checkpoints
import Conditioning
import Diffusion
import Foundation
import Pipelines
import TensorCore
import XCTest
@testable import CompVis

final class ArchitectureFromWeightsTests: XCTestCase {
    struct Fixture: Decodable { let cases: [PipelineCase] }

    func stockYAML(_ name: String) throws -> [String: Any] {
        let data = try Data(contentsOf: fixtures.appendingPathComponent("compvis_configs/parsed_yaml.json"))
        return try XCTUnwrap((try JSONSerialization.jsonObject(with: data) as? [String: Any])?[name] as? [String: Any])
    }

    func tempDir() throws -> URL {
        let d = FileManager.default.temporaryDirectory.appendingPathComponent("ldm-arch-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: d, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: d) }
        return d
    }

    func compVisFile(_ folder: URL) throws -> URL {
        let file = try tempDir().appendingPathComponent("model.safetensors")
        try Converter.convert(input: folder, output: file, options: ConvertOptions(target: .compvis))
        return file
    }

    func testStockV1YAMLWithANonViTLTextEncoderLoadsAndMatchesDiffusers() throws {
        let folder = fixtures.appendingPathComponent("tiny-sd-clip-vocab")
        let file = try compVisFile(folder)
        let bundle = try ModelBundle.load(checkpoint: file, yaml: stockYAML("v1-inference"))
        let te = try XCTUnwrap(bundle.textEncoder).config
        XCTAssertEqual([te.hiddenSize, te.numHiddenLayers, te.intermediateSize, te.vocabSize], [32, 2, 64, 49408])
        XCTAssertEqual(bundle.unet.config.crossAttentionDim, [32, 32])
        for expected in ["model_channels: YAML 320 -> 32", "context_dim: YAML 768 -> 32", "channel_mult: YAML [1, 2, 4, 4] -> [1, 1]",
                         "ddconfig.ch: YAML 128 -> 32"] {
            XCTAssertTrue(bundle.notes.contains { $0.contains(expected) }, "\(expected) not in \(bundle.notes)")
        }
        let fx = try JSONDecoder().decode(Fixture.self, from: Data(contentsOf: folder.appendingPathComponent("cases.json")))
        let outputs = try CheckpointFile.open(folder.appendingPathComponent("outputs.safetensors")).tensors
        // The YAML's scheduler is diffusers' legacy single-file one (DDIM, "leading" spacing), the folder's a PNDM config
        // whose swapped-in samplers keep their own spacing: the images are compared under the folder's scheduler.
        let sched = try SchedulerConfig.load(contentsOf: folder.appendingPathComponent("scheduler/scheduler_config.json"))
        let pipe = try StableDiffusionPipeline(bundle: ModelBundle(url: file, unet: bundle.unet, firstStage: bundle.firstStage,
                                                                   textEncoder: bundle.textEncoder, tokenizer: bundle.tokenizer,
                                                                   schedulerConfig: sched, sampleSize: 8))
        XCTAssertEqual(fx.cases.count, 4)
        for c in fx.cases {
            let r = try pipe.textToImage(
                PromptOptions(prompt: c.prompt ?? "", negativePrompt: c.negative_prompt ?? "", guidanceScale: c.cfg ?? 7.5,
                              width: c.width, height: c.height),
                SamplingOptions(sampler: c.sampler, steps: c.steps, eta: c.eta ?? 0, batchSize: c.batch), generator: TorchGenerator(seed: c.seed))
            let ours = r.images.flatMap(\.pixels)
            let ref = try XCTUnwrap(outputs[c.name]).floats().map { UInt8((min(max($0, 0), 1) * 255).rounded(.toNearestOrEven)) }
            XCTAssertEqual(ours.count, ref.count, c.name)
            guard ours.count == ref.count else { continue }
            let p = psnr(ours, ref)
            print("PSNR stock v1 YAML \(c.name): \(p) dB")
            XCTAssertGreaterThanOrEqual(p, 45, c.name)
        }
    }

    /// A YAML that already describes the weights is left exactly as it is (no notes).
    func testReconcileKeepsAYAMLThatMatches() throws {
        let file = try compVisFile(fixtures.appendingPathComponent("tiny-sd-clip-vocab"))
        let records = try CheckpointFile.open(file).tensors
        let (fixed, notes) = try CompVisArchitecture.reconcile(yaml: stockYAML("v1-inference"), records: records)
        XCTAssertFalse(notes.isEmpty)
        let (again, none) = try CompVisArchitecture.reconcile(yaml: fixed, records: records)
        XCTAssertEqual(none, [])
        XCTAssertEqual(try JSONSerialization.data(withJSONObject: again, options: .sortedKeys),
                       try JSONSerialization.data(withJSONObject: fixed, options: .sortedKeys))
        // Values the weights do not pin stay the YAML's.
        let unet = ((fixed["model"] as? [String: Any])?["params"] as? [String: Any])?["unet_config"] as? [String: Any]
        XCTAssertEqual((unet?["params"] as? [String: Any])?["num_heads"] as? Int, 8)
    }

    /// SD 2.x's stock YAML sets num_head_channels 64: a 16-channel UNet has no such heads, which the weights cannot
    /// change; the refusal is one sentence.
    func testWhatTheWeightsCannotGiveIsRefusedInOneSentence() throws {
        let file = try compVisFile(modern.appendingPathComponent("sd2"))
        XCTAssertThrowsError(try ModelBundle.load(checkpoint: file, yaml: stockYAML("v2-inference"))) { e in
            let text = "\(e)"
            XCTAssertTrue(text.contains("num_head_channels 64"), text)
            XCTAssertFalse(text.contains("\n"), text)
        }
    }

    func testOpenCLIPTextEncoderSizeFromTheWeights() throws {
        let file = try compVisFile(modern.appendingPathComponent("sd2"))
        var records = try CheckpointFile.open(file).tensors
        // Written from a diffusers CLIPTextModel (no text_projection): used whole, as diffusers does.
        var c = try CLIPTextConfig.frozenOpenCLIPEmbedder(records)
        XCTAssertEqual([c.hiddenSize, c.numHiddenLayers, c.intermediateSize, c.maxPositionEmbeddings], [32, 2, 40, 77])
        XCTAssertEqual(c.hiddenAct, "gelu")
        // A full open_clip tower (text_projection present, as in the released SD 2.x files): penultimate layer.
        let proj = try XCTUnwrap(records["cond_stage_model.model.token_embedding.weight"])
        records["cond_stage_model.model.text_projection"] = proj
        c = try CLIPTextConfig.frozenOpenCLIPEmbedder(records)
        XCTAssertEqual(c.numHiddenLayers, 1)
        // The SD 1.x single-file path (no YAML) derives the same way.
        let sd1 = try CheckpointFile.open(try compVisFile(fixtures.appendingPathComponent("tiny-sd"))).tensors
        let c1 = try CLIPTextConfig.frozenCLIPEmbedder(sd1)
        XCTAssertEqual([c1.hiddenSize, c1.numHiddenLayers, c1.numAttentionHeads], [32, 2, 1])
        XCTAssertThrowsError(try CLIPTextConfig.frozenCLIPEmbedder(sd1.filter { !$0.key.contains("token_embedding") })) { e in
            XCTAssertTrue("\(e)".contains("token_embedding"), "\(e)")
        }
    }

    /// `ldm txt2img --config v1-inference.yaml` on the same file: the early summary and the load agree, the notes are shown.
    func testCLIWithTheStockYAML() throws {
        let ldm = LDMExecutable.url
        guard FileManager.default.isExecutableFile(atPath: ldm.path) else { return XCTFail("the ldm executable is not built at \(ldm.path)") }
        let file = try compVisFile(fixtures.appendingPathComponent("tiny-sd-clip-vocab"))
        let out = file.deletingLastPathComponent().appendingPathComponent("out.png")
        let p = Process()
        p.executableURL = ldm
        p.arguments = ["txt2img", "--config", fixtures.appendingPathComponent("compvis_configs/v1-inference.yaml").path, "--model", file.path,
                       "--prompt", "a photo of an astronaut riding a horse", "--steps", "2", "--width", "16", "--height", "16",
                       "--output", out.path]
        p.arguments! += ["--precision", "f32"] // the server's precision (the CLI default, auto, is bf16 on native-bf16 CPUs)
        let err = Pipe()
        p.standardError = err
        p.standardOutput = Pipe()
        try p.run()
        let stderr = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0, stderr)
        XCTAssertTrue(stderr.contains("note: unet_config.params.model_channels: YAML 320 -> 32"), stderr)
        XCTAssertTrue(FileManager.default.fileExists(atPath: out.path))
    }
}
