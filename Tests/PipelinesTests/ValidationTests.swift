// Bad input is refused with a PipelineError naming the problem (the checks the `ldm` generation commands run
// before loading a model, and the pipelines' own checks).
import Checkpoints
import Foundation
import Imaging
import Pipelines
import TensorCore
import XCTest
@testable import CompVis

final class ValidationTests: XCTestCase {
    func message(_ body: () throws -> Void) -> String {
        do { try body(); return "" } catch { return "\(error)" }
    }

    func testNumbers() {
        XCTAssertTrue(message { try Validation.checkSize(width: 512, height: 500) }.contains("height must be a multiple of 8"))
        XCTAssertTrue(message { try Validation.checkSize(width: 0, height: 64) }.contains("width must be > 0"))
        XCTAssertTrue(message { try Validation.checkSize(width: -8, height: 64) }.contains("width must be > 0"))
        XCTAssertEqual(message { try Validation.checkSize(width: 768, height: 512) }, "")
        XCTAssertTrue(message { try Validation.checkSteps(0) }.contains("steps must be >= 1"))
        XCTAssertTrue(message { try Validation.checkStrength(1.5) }.contains("strength must be in [0, 1]"))
        XCTAssertTrue(message { try Validation.checkStrength(.nan) }.contains("strength"))
        XCTAssertTrue(message { try Validation.checkGuidance(.infinity) }.contains("cfg scale"))
        XCTAssertTrue(message { try Validation.checkGuidance(.nan) }.contains("cfg scale"))
        XCTAssertTrue(message { try Validation.checkImg2ImgSteps(steps: 4, strength: 0.1) }.contains("no denoising step"))
        XCTAssertTrue(message { try SamplingOptions(sampler: "bogus").validate() }.contains("unknown sampler 'bogus'"))
        XCTAssertEqual(message { try SamplingOptions(sampler: "DPM++ 2M Karras").validate() }, "")
        XCTAssertTrue(message { try SamplingOptions(batchSize: 0).validate() }.contains("batch size"))
        XCTAssertTrue(message { try Validation.checkMaskSize(image: (64, 64), mask: (32, 64)) }.contains("mask is 32x64"))
    }

    func error(_ body: () throws -> Void) -> PipelineError? {
        do { try body(); return nil } catch { return error as? PipelineError }
    }

    /// Callers switch on the typed cases; the words users see are the messages these checks always printed.
    func testTypedCases() {
        let steps = error { try Validation.checkSteps(0) }
        XCTAssertEqual(steps, .invalidArgument(name: "steps", value: "0", why: "must be >= 1, got 0"))
        XCTAssertEqual(steps?.description, "steps must be >= 1, got 0")
        XCTAssertEqual(error { try Validation.checkSize(width: 20000, height: 64) }?.description, "width 20000 is larger than 16384")
        XCTAssertEqual(error { try Validation.checkEta(-1) }, .invalidArgument(name: "eta", value: "-1.0", why: "must be a finite number >= 0, got -1.0"))
        let mask = error { try Validation.checkMaskSize(image: (64, 48), mask: (32, 64)) }
        XCTAssertEqual(mask, .maskSizeMismatch(maskWidth: 32, maskHeight: 64, imageWidth: 64, imageHeight: 48))
        XCTAssertEqual(mask?.description, "mask is 32x64 but the init image is 64x48; they must match")
        let sampler = error { try SamplingOptions(sampler: "bogus").validate() }
        XCTAssertEqual(sampler, .unknownSampler("bogus"))
        XCTAssertTrue(sampler?.description.hasPrefix("unknown sampler 'bogus'; valid: ") == true)
        XCTAssertEqual(error { try SamplingOptions(timestepSpacing: "sideways").validate() },
                       .invalidArgument(name: "timestep spacing", value: "sideways", why: "must be one of leading, linspace, trailing, got 'sideways'"))
        XCTAssertEqual(error { _ = try LayoutObject.parseList(Data("{}".utf8), classNames: [], objectClasses: 1, maxObjects: 1) }?.description,
                       "layout: expected a JSON list of objects or {\"objects\": [...]}")
    }

    func testCorruptModel() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("ldm-val-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        // A corrupt model file is an error, not a crash.
        let bad = dir.appendingPathComponent("bad.safetensors")
        try Data("not a checkpoint".utf8).write(to: bad)
        XCTAssertFalse(message { _ = try ModelSummary.read(bad) }.isEmpty)
    }

    func testModelCapabilities() throws {
        let ldm = try Shared.ldm.get()
        XCTAssertThrowsError(try StableDiffusionPipeline(bundle: ldm)) { e in
            XCTAssertEqual(e as? PipelineError, .wrongModelKind(model: ldm.url.path, kind: .unconditional, task: .txt2img))
        }
        let s = try ModelSummary.read(fixtures.appendingPathComponent("tiny-ldm"))
        XCTAssertFalse(s.hasTextEncoder); XCTAssertEqual(s.firstStage, .vqModel)
        let sd = try ModelSummary.read(fixtures.appendingPathComponent("tiny-sd"))
        XCTAssertTrue(sd.hasTextEncoder); XCTAssertEqual(sd.unetInChannels, 4)
        // One answer to "which task runs this model".
        XCTAssertEqual(s.kind, .unconditional)
        XCTAssertEqual(s.kind.tasks, [.sample])
        XCTAssertEqual(sd.kind, .text(.clip))
        XCTAssertEqual(sd.kind.tasks, [.txt2img, .img2img, .inpaint])
        XCTAssertEqual(try Shared.sd.get().kind, sd.kind)
        XCTAssertEqual(ldm.kind, s.kind)
        let pipe = LatentDiffusionPipeline(bundle: ldm)
        XCTAssertTrue(message { _ = try pipe.sample(SamplingOptions(steps: 2), classLabel: 3, generator: TorchGenerator(seed: 0)) }
            .contains("not class-conditional"))
        XCTAssertTrue(message { _ = try pipe.upscale(try RGBImage(width: 32, height: 32), SamplingOptions(steps: 2), generator: TorchGenerator(seed: 0)) }
            .contains("not a super-resolution model"))
        let sdPipe = try StableDiffusionPipeline(bundle: try Shared.sd.get())
        let img = try RGBImage(width: 16, height: 16), mask = try GrayImage(width: 8, height: 16, pixels: [UInt8](repeating: 0, count: 128))
        XCTAssertTrue(message { _ = try sdPipe.inpaint(PromptOptions(prompt: "a"), SamplingOptions(steps: 2), image: img, mask: mask,
                                                       generator: TorchGenerator(seed: 0)) }.contains("mask is 8x16"))
        XCTAssertTrue(message { _ = try sdPipe.textToImage(PromptOptions(prompt: "a", width: 12), SamplingOptions(steps: 2),
                                                           generator: TorchGenerator(seed: 0)) }.contains("multiple of 8"))
    }

    /// A CompVis single file (tiny-sd converted by CompVis.Converter): its summary is read from shapes, and loading
    /// refuses (with a message, no trap) shapes the SD-default derived config (32 groups) cannot hold.
    func testCompVisSingleFile() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("ldm-cv-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let file = dir.appendingPathComponent("tiny.safetensors")
        _ = try Converter.convert(input: fixtures.appendingPathComponent("tiny-sd"), output: file, options: ConvertOptions(target: .compvis))
        let s = try ModelSummary.read(file)
        XCTAssertTrue(s.isCompVisFile); XCTAssertTrue(s.hasTextEncoder); XCTAssertEqual(s.unetInChannels, 4)
        XCTAssertEqual(s.unetOutChannels, 4); XCTAssertEqual(s.firstStage, .autoencoderKL)
        XCTAssertTrue(message { _ = try ModelBundle.load(file) }.contains("not multiples of 32 groups"))
    }
}
