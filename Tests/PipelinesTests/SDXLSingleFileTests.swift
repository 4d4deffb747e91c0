// SDXL single files (Stability / sgm names) against diffusers (tools/fixtures/sdxl_single_file.py): the tiny SDXL and
// refiner pipelines as folders and as single files written with convert_diffusers_to_original_sdxl.py's mapping, which
// diffusers' own from_single_file(config=folder) loads back to equal weights and equal images. Here: the single file
// loads to the folder's weights exactly and gives the folder's and diffusers' images; `ldm convert` writes the same
// single file from the folder (names and bytes), and converts back to the folder's tensors bit for bit; the config
// derived from the shapes alone agrees with the folder's on every value the weights pin.
import Checkpoints
import CompVis
import Conditioning
import Foundation
import NeuralNetwork
import Pipelines
import TensorCore
import Tokenizers
import UNetModels
import XCTest

enum SDXLSingleFileFixtures {
    static let dir = fixtures.appendingPathComponent("sdxl-single-file")
    static let folder = dir.appendingPathComponent("tiny-sdxl")
    static let file = dir.appendingPathComponent("tiny-sdxl.safetensors")
    static let refinerFolder = dir.appendingPathComponent("tiny-refiner")
    static let refinerFile = dir.appendingPathComponent("tiny-refiner.safetensors")
    static let outputs: [String: TensorRecord] = (try? CheckpointFile.open(dir.appendingPathComponent("outputs.safetensors")).tensors) ?? [:]
}

final class SDXLSingleFileTests: XCTestCase {
    typealias F = SDXLSingleFileFixtures

    func tmpDir() throws -> URL {
        let d = FileManager.default.temporaryDirectory.appendingPathComponent("sdxl-single-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: d, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: d) }
        return d
    }

    func assertSameParameters(_ a: Module?, _ b: Module?, _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        guard let a, let b else { return XCTAssertTrue(a == nil && b == nil, "\(what): present in one bundle only", file: file, line: line) }
        let pa = a.namedParameters, pb = Dictionary(b.namedParameters, uniquingKeysWith: { x, _ in x })
        XCTAssertEqual(pa.count, pb.count, what, file: file, line: line)
        var differing: [String] = []
        for (name, t) in pa where pb[name]?.toArray() != t.toArray() { differing.append(name) }
        XCTAssertEqual(differing, [], "\(what): parameters differ", file: file, line: line)
    }

    func assertSameBundles(_ a: ModelBundle, _ b: ModelBundle) {
        assertSameParameters(a.unet, b.unet, "unet")
        if case .kl(let va) = a.firstStage, case .kl(let vb) = b.firstStage { assertSameParameters(va, vb, "vae") } else { XCTFail("no AutoencoderKL") }
        assertSameParameters(a.textEncoder, b.textEncoder, "text_encoder")
        assertSameParameters(a.textEncoder2, b.textEncoder2, "text_encoder_2")
        XCTAssertEqual(a.schedulerConfig, b.schedulerConfig)
        XCTAssertEqual(a.forceZerosForEmptyPrompt, b.forceZerosForEmptyPrompt)
        XCTAssertEqual(a.requiresAestheticsScore, b.requiresAestheticsScore)
        XCTAssertEqual(a.kind, b.kind)
    }

    func testSingleFileLoadsTheFolderWeights() throws {
        let single = try ModelBundle.load(F.file, diffusersConfig: F.folder)
        let folder = try ModelBundle.load(F.folder)
        XCTAssertTrue(single.isSDXL)
        XCTAssertEqual(single.kind, .text(.sdxl))
        assertSameBundles(single, folder)
    }

    func testRefinerSingleFileLoadsTheFolderWeights() throws {
        let single = try ModelBundle.load(F.refinerFile, diffusersConfig: F.refinerFolder)
        let folder = try ModelBundle.load(F.refinerFolder)
        XCTAssertNil(single.textEncoder)
        XCTAssertTrue(single.requiresAestheticsScore)
        XCTAssertEqual(single.kind, .text(.sdxlRefiner))
        assertSameBundles(single, folder)
        XCTAssertEqual(try ModelSummary.read(F.refinerFile).kind, .text(.sdxlRefiner))
    }

    func pixels(_ bundle: ModelBundle, prompt: String, negative: String, cfg: Double, width: Int, seed: UInt64) throws -> [UInt8] {
        let pipe = try StableDiffusionPipeline(bundle: bundle)
        let p = PromptOptions(prompt: prompt, negativePrompt: negative, guidanceScale: cfg, width: width, height: 16)
        return try pipe.textToImage(p, SamplingOptions(sampler: "euler", steps: 3), generator: TorchGenerator(seed: seed)).images.flatMap(\.pixels)
    }

    func testSingleFileImagesEqualTheFolderAndDiffusers() throws {
        let single = try ModelBundle.load(F.file, diffusersConfig: F.folder)
        let folder = try ModelBundle.load(F.folder)
        XCTAssertEqual(try ModelSummary.read(F.file).kind, .text(.sdxl))
        for (name, prompt, negative, cfg, width, seed) in [("sdxl_euler_seed0", "a cat", "", 5.0, 16, UInt64(0)),
                                                            ("sdxl_euler_negative_seed3", "the dog", "a cat", 6.0, 24, 3)] {
            let ours = try pixels(single, prompt: prompt, negative: negative, cfg: cfg, width: width, seed: seed)
            XCTAssertEqual(ours, try pixels(folder, prompt: prompt, negative: negative, cfg: cfg, width: width, seed: seed), name)
            let ref = try XCTUnwrap(F.outputs[name], name).floats().map { UInt8((min(max($0, 0), 1) * 255).rounded(.toNearestOrEven)) }
            XCTAssertEqual(ours.count, ref.count, name)
            guard ours.count == ref.count else { continue }
            let db = psnr(ours, ref)
            print("PSNR \(name) (single file vs diffusers from_single_file): \(db) dB")
            XCTAssertGreaterThanOrEqual(db, 45, name)
        }
    }

    /// Tensors of a file or folder under canonical names (CLIP text models in the "text_model." spelling).
    func canonicalTensors(_ url: URL) throws -> [String: TensorRecord] {
        var out: [String: TensorRecord] = [:]
        for (k, r) in try CheckpointFile.open(url).tensors {
            var name = k
            for p in ["text_encoder.", "text_encoder_2.", CLIPTable.sdxlPrefix] where k.hasPrefix(p) {
                name = p + CLIPTextKeys.canonical(String(k.dropFirst(p.count)))
            }
            out[name] = r
        }
        return out
    }

    func assertSameTensors(_ a: [String: TensorRecord], _ b: [String: TensorRecord], _ what: String,
                           file: StaticString = #filePath, line: UInt = #line) throws {
        XCTAssertEqual(Set(a.keys).symmetricDifference(b.keys).sorted(), [], what, file: file, line: line)
        var differing: [String] = []
        for (k, r) in a {
            guard let o = b[k] else { continue }
            let same = try r.dtype == o.dtype && r.shape == o.shape && r.rawData() == o.rawData()
            if !same { differing.append(k) }
        }
        XCTAssertEqual(differing.sorted(), [], "\(what): tensors differ", file: file, line: line)
    }

    func testConvertFolderToSingleFileAndBackIsExact() throws {
        let tmp = try tmpDir()
        for (folder, reference) in [(F.folder, F.file), (F.refinerFolder, F.refinerFile)] {
            let single = tmp.appendingPathComponent(folder.lastPathComponent + ".safetensors")
            try Converter.convert(input: folder, output: single, options: ConvertOptions(target: .compvis))
            // The same names and bytes as diffusers' convert_diffusers_to_original_sdxl.py mapping wrote.
            try assertSameTensors(canonicalTensors(single), canonicalTensors(reference), "folder -> single \(folder.lastPathComponent)")
            let back = tmp.appendingPathComponent(folder.lastPathComponent + "-back")
            let lines = try Converter.convert(input: reference, output: back, options: ConvertOptions(target: .diffusers))
            XCTAssertFalse(lines.contains { $0.hasPrefix("not converted") }, "\(lines)")
            try assertSameTensors(canonicalTensors(back), canonicalTensors(folder), "single -> folder \(folder.lastPathComponent)")
            let again = tmp.appendingPathComponent(folder.lastPathComponent + "-again.safetensors")
            try Converter.convert(input: back, output: again, options: ConvertOptions(target: .compvis))
            try assertSameTensors(canonicalTensors(again), canonicalTensors(reference), "round trip \(folder.lastPathComponent)")
            let idx = try XCTUnwrap(DiffusersFolder(url: back).modelIndex)
            XCTAssertEqual(idx["_class_name"] as? String, folder == F.folder ? "StableDiffusionXLPipeline" : "StableDiffusionXLImg2ImgPipeline")
            XCTAssertEqual(ModelFamily.detect(try DiffusersFolder(url: back)).kind, folder == F.folder ? .sdxl : .sdxlRefiner)
            // The written tokenizer folders tokenize as the shipped vocabulary does (tokenizer_2 pads with "!").
            let text = "a photo of an astronaut riding a horse"
            let written2 = try CLIPTokenizer(folder: back.appendingPathComponent("tokenizer_2"))
            XCTAssertEqual(written2(text, maxLength: 77), try CLIPTokenizer.openCLIPDefault(padToken: "!")(text, maxLength: 77))
            if folder == F.folder {
                let written = try CLIPTokenizer(folder: back.appendingPathComponent("tokenizer"))
                XCTAssertEqual(written(text, maxLength: 77), try CLIPTokenizer.openCLIPDefault()(text, maxLength: 77))
            } else {
                XCTAssertFalse(FileManager.default.fileExists(atPath: back.appendingPathComponent("tokenizer").path))
            }
        }
    }

    /// Values the weights pin, derived from the single file's shapes alone, against the folder's config.json.
    func testConfigDerivedFromShapesAgreesWithTheFolder() throws {
        for (file, folder, refiner) in [(F.file, F.folder, false), (F.refinerFile, F.refinerFolder, true)] {
            let (layout, comps, unmapped) = try Converter.compvisToDiffusers(CheckpointFile.open(file).tensors)
            XCTAssertEqual(unmapped, [])
            XCTAssertTrue(layout.isSDXL)
            XCTAssertEqual(layout.isSDXLRefiner, refiner)
            // What `ldm inspect` reports for the file.
            XCTAssertEqual(ModelFamily.detect(try CheckpointFile.open(file).tensors).kind, refiner ? .sdxlRefiner : .sdxl)
            let unetShapes = Dictionary(try XCTUnwrap(comps["unet"]).map { ($0.name, $0.shape) }, uniquingKeysWith: { a, _ in a })
            let pooled = comps["text_encoder_2"]?.first { $0.name == "text_projection.weight" }?.shape.first
            let sdxl = try SDXLConditioningShape(unet: unetShapes, pooledDim: pooled, refiner: refiner)
            let config = try DiffusersConfigs.unet(try XCTUnwrap(layout.unet), shapes: unetShapes, sdxl: sdxl).config
            let derived = try XCTUnwrap(JSONSerialization.jsonObject(with: DiffusersConfigs.json(config)) as? [String: Any])
            let stated = try XCTUnwrap(DiffusersFolder(url: folder).component("unet")?.config)
            for key in ["in_channels", "out_channels", "block_out_channels", "layers_per_block", "down_block_types", "up_block_types",
                        "mid_block_type", "cross_attention_dim", "use_linear_projection", "addition_embed_type",
                        "addition_time_embed_dim", "projection_class_embeddings_input_dim"] {
                XCTAssertEqual(derived[key].map { "\($0)" }, stated[key].map { "\($0)" }, "\(file.lastPathComponent): \(key)")
            }
            let depth = { (v: Any?) -> [Int] in (v as? [Int]) ?? (v as? Int).map { [Int](repeating: $0, count: 2) } ?? [] }
            let levels = (stated["down_block_types"] as? [String] ?? []).enumerated().filter { $0.element.hasPrefix("CrossAttn") }.map(\.offset)
            let d = depth(derived["transformer_layers_per_block"]), s = depth(stated["transformer_layers_per_block"])
            XCTAssertEqual(levels.map { d.count > $0 ? d[$0] : d.first ?? 0 }, levels.map { s[$0] }, "\(file.lastPathComponent): transformer depth")
        }
        // Without a config folder the tiny model cannot be built from SDXL's defaults (32 norm groups): a clear error.
        XCTAssertThrowsError(try ModelBundle.load(F.file)) { e in
            XCTAssertTrue("\(e)".contains("groups"), "\(e)")
        }
        // A config folder is for SDXL single files only, and must be an SDXL folder.
        XCTAssertThrowsError(try ModelBundle.load(F.file, diffusersConfig: fixtures.appendingPathComponent("tiny-sd")))
        XCTAssertThrowsError(try ModelBundle.load(F.folder, diffusersConfig: F.folder))
    }
}
