// The generation commands' --rng cuda, --clip-skip and --emphasis, end to end through the built `ldm` executable on
// the tiny diffusers model of tools/fixtures/pipelines.py (Fixtures/tiny-sd: 64 px, a 2-layer CLIP), plus the
// library behaviour behind them (emphasis modes, prompts of different chunk counts under guidance).
import Foundation
import Imaging
import Pipelines
import TensorCore
import XCTest

final class GenerationCLITests: LDMCommandTestCase {
    var model: String { fixtures.appendingPathComponent("tiny-sd").path }

    func txt2img(_ out: URL, _ extra: [String]) throws -> (Int32, String) {
        try run(["txt2img", "--model", model, "--prompt", "a red cube", "--steps", "2", "--seed", "7", "--sampler", "euler-a",
                 "--output", out.path, "--quiet"] + extra)
    }

    func testTimingsReportLoadStepsDecodeAndPeakRSS() throws {
        let out = try tempDir().appendingPathComponent("t.png")
        let (status, err) = try txt2img(out, ["--timings", "--steps", "3"])
        XCTAssertEqual(status, 0, err)
        let line = try XCTUnwrap(err.split(separator: "\n").first { $0.hasPrefix("timings: ") }, "no timings line (also expected with --quiet): \(err)")
        for part in ["load ", "text encoding ", "3 steps ", " s/step", "decode ", "write ", "total ", "peak RSS "] {
            XCTAssertTrue(line.contains(part), "\(part) missing in \(line)")
        }
        let rss = try XCTUnwrap(Int(line.components(separatedBy: "peak RSS ").last?.split(separator: " ").first ?? ""), String(line))
        XCTAssertGreaterThan(rss, 10, "peak RSS in MB")
        XCTAssertTrue(FileManager.default.fileExists(atPath: out.path))
    }

    func testRNGCudaMatchesTheLibraryAndIsRecorded() throws {
        let dir = try tempDir()
        let cuda = dir.appendingPathComponent("cuda.png"), torch = dir.appendingPathComponent("torch.png")
        let (s1, e1) = try txt2img(cuda, ["--rng", "cuda"])
        XCTAssertEqual(s1, 0, e1)
        let (s2, e2) = try txt2img(torch, [])
        XCTAssertEqual(s2, 0, e2)
        XCTAssertEqual(try parameters(cuda).extraValue("RNG"), "NV")
        XCTAssertEqual(try parameters(torch).extraValue("RNG"), "CPU")

        let pipe = try StableDiffusionPipeline(bundle: Shared.sd.get())
        let sampling = SamplingOptions(sampler: "euler-a", steps: 2, eta: 0, batchSize: 1)
        let prompt = PromptOptions(prompt: "a red cube")
        let want = try pipe.textToImage(prompt, sampling, generator: CUDAGenerator(seed: 7)).images[0].pixels
        XCTAssertEqual(try ImageIO.loadRGB(path: cuda.path).pixels, want)
        XCTAssertNotEqual(try ImageIO.loadRGB(path: torch.path).pixels, want)

        let gpu = dir.appendingPathComponent("gpu.png")
        let (s3, e3) = try txt2img(gpu, ["--rng", "cuda", "--cuda-sms", "82", "--cuda-threads-per-sm", "1536"])
        XCTAssertEqual(s3, 0, e3)
        XCTAssertEqual(try parameters(gpu).extraValue("RNG"), "GPU")
        XCTAssertEqual(try ImageIO.loadRGB(path: gpu.path).pixels, want, "a 256-element latent is one wave on any GPU")
    }

    func testClipSkipAndEmphasisAreRecorded() throws {
        let dir = try tempDir()
        let out = dir.appendingPathComponent("a.png")
        let (s, e) = try run(["txt2img", "--model", model, "--prompt", "a (red:1.3) cube", "--steps", "1", "--seed", "1",
                              "--clip-skip", "2", "--emphasis", "original", "--output", out.path, "--quiet"])
        XCTAssertEqual(s, 0, e)
        let p = try parameters(out)
        XCTAssertEqual(p.extraValue("Clip skip"), "2")
        XCTAssertNil(p.extraValue("Emphasis"), "the web UI does not write its default mode")
        XCTAssertEqual(p.prompt, "a (red:1.3) cube")

        let b = dir.appendingPathComponent("b.png")
        let (s2, e2) = try run(["txt2img", "--model", model, "--prompt", "a (red:1.3) cube", "--steps", "1", "--seed", "1",
                                "--emphasis", "no-norm", "--output", b.path, "--quiet"])
        XCTAssertEqual(s2, 0, e2)
        XCTAssertEqual(try parameters(b).extraValue("Emphasis"), "No norm")
        XCTAssertNil(try parameters(b).extraValue("Clip skip"))
    }

    func testBadValuesFailWithAMessage() throws {
        let dir = try tempDir()
        let out = dir.appendingPathComponent("x.png")
        let cases: [([String], String)] = [
            (["--rng", "gpu"], "--rng must be"),
            (["--rng", "cuda", "--cuda-sms", "82"], "go together"),
            (["--cuda-sms", "82", "--cuda-threads-per-sm", "1536"], "need --rng cuda"),
            (["--rng", "cuda", "--cuda-sms", "0", "--cuda-threads-per-sm", "1536"], "--cuda-sms must be"),
            (["--rng", "cuda", "--cuda-sms", "8", "--cuda-threads-per-sm", "100"], "--cuda-threads-per-sm must be"),
            (["--clip-skip", "0"], "--clip-skip must be >= 1"),
            (["--clip-skip", "3"], "text encoder has 2 layers"),
            (["--emphasis", "loud"], "--emphasis must be one of"),
        ]
        for (args, message) in cases {
            let (status, err) = try txt2img(out, args)
            XCTAssertNotEqual(status, 0, "\(args)")
            XCTAssertTrue(err.contains(message), "\(args): \(err)")
            XCTAssertFalse(FileManager.default.fileExists(atPath: out.path), "\(args)")
        }
        for command in ["img2img", "inpaint", "upscale", "sample"] {
            let (status, err) = try run([command, "--model", model, "--output", out.path, "--rng", "philox"])
            XCTAssertNotEqual(status, 0, command)
            XCTAssertTrue(err.contains("--rng must be") || err.contains("Missing expected argument"), "\(command): \(err)")
        }
        let (status, err) = try run(["sample", "--model", model, "--output", out.path, "--rng", "philox"])
        XCTAssertNotEqual(status, 0)
        XCTAssertTrue(err.contains("--rng must be torch, torch-scalar or cuda"), err)
    }

    /// A prompt of exactly two 75-token chunks for the fixture's (small-vocabulary) tokenizer.
    func twoChunkPrompt(_ pipe: StableDiffusionPipeline) throws -> String {
        let tokenizer = try XCTUnwrap(pipe.bundle.tokenizer)
        for n in 1...200 {
            let text = Array(repeating: "red cube", count: n).joined(separator: " ")
            if tokenizer.weightedPrompt(text, emphasis: true).chunks.count == 2 { return text }
        }
        throw XCTSkip("no two-chunk prompt found")
    }

    func testEmphasisModes() throws {
        // The fixture's random CLIP ends in a LayerNorm with zero bias: its hidden states have a mean that is rounding
        // noise (~1e-8, or exactly 0), where the web UI's mean restoration ("original") is undefined. A bias, as
        // trained encoders have, makes it well defined (a private copy of the model: Shared.sd stays untouched).
        let bundle = try ModelBundle.load(fixtures.appendingPathComponent("tiny-sd"))
        let norm = try XCTUnwrap(bundle.textEncoder).finalLayerNorm
        norm.bias.assign(Tensor((0..<norm.bias.count).map { 0.05 + 0.01 * Float($0 % 7) }, shape: norm.bias.shape))
        let pipe = try StableDiffusionPipeline(bundle: bundle)
        func cond(_ text: String, _ mode: PromptEmphasis) throws -> [Float] {
            try pipe.encodePrompt(PromptOptions(prompt: text, emphasis: mode), batch: 1, guidance: false).0.toArray()
        }
        let original = try cond("a (red:1.5) cube", .original)
        XCTAssertFalse(original.contains { !$0.isFinite })
        XCTAssertNotEqual(original, try cond("a red cube", .original))
        XCTAssertNotEqual(original, try cond("a (red:1.5) cube", .noNorm))
        XCTAssertEqual(try cond("a (red:1.5) cube", .ignore), try cond("a red cube", .original))
        XCTAssertNotEqual(try cond("a (red:1.5) cube", .none), try cond("a red cube", .original))
        // A prompt longer than one chunk: 77 tokens per chunk with the web UI's chunking, 77 with diffusers' truncation.
        let long = try twoChunkPrompt(pipe)
        XCTAssertEqual(try pipe.encodePrompt(PromptOptions(prompt: long, emphasis: .original), batch: 1, guidance: false).0.shape[1], 154)
        XCTAssertEqual(try pipe.encodePrompt(PromptOptions(prompt: long), batch: 1, guidance: false).0.shape[1], 77)
    }
}

extension GenerationCLITests {
    /// `ldm txt2img` on an LDM-BERT folder runs diffusers' LDMTextToImagePipeline: guidance 1 by default (its
    /// __call__ default), the same image as the library, and CLIP-only options refused.
    func testTxt2ImgRunsLDMBertFolders() throws {
        let dir = try tempDir()
        let model = fixtures.appendingPathComponent("ldm-text2img/pipeline").path
        let out = dir.appendingPathComponent("ldm.png")
        let args = ["txt2img", "--model", model, "--prompt", "a painting of a squirrel", "--steps", "2", "--seed", "3",
                    "--sampler", "ddim", "--quiet"]
        let (s, e) = try run(args + ["--output", out.path])
        XCTAssertEqual(s, 0, e)
        let p = try parameters(out)
        XCTAssertEqual(p.cfgScale, 1)
        let pipe = try LDMTextToImagePipeline(bundle: ModelBundle.load(URL(fileURLWithPath: model)))
        let want = try pipe.textToImage(PromptOptions(prompt: "a painting of a squirrel", guidanceScale: 1),
                                        SamplingOptions(sampler: "ddim", steps: 2), generator: TorchGenerator(seed: 3))
        XCTAssertEqual(try ImageIO.loadRGB(path: out.path).pixels, want.images[0].pixels)
        XCTAssertEqual(try ImageIO.loadRGB(path: out.path).width, 32)
        for (extra, message) in [(["--clip-skip", "2"], "--clip-skip is for CLIP"), (["--emphasis", "original"], "--emphasis is for CLIP")] {
            let bad = dir.appendingPathComponent("bad.png")
            let (status, err) = try run(args + extra + ["--output", bad.path])
            XCTAssertNotEqual(status, 0); XCTAssertTrue(err.contains(message), err)
        }
        let (status, err) = try run(["img2img", "--model", model, "--prompt", "a", "--init-image", fixtures.appendingPathComponent("init.png").path,
                                     "--output", dir.appendingPathComponent("i.png").path])
        XCTAssertNotEqual(status, 0); XCTAssertTrue(err.contains("use `ldm txt2img`"), err)
    }
}

extension GenerationCLITests {
    /// `ldm txt2img --config` on a CompVis BERTEmbedder checkpoint (tools/fixtures/compvis_ldm_bert.py): the YAML and
    /// vocab.txt beside the file or --bert-vocab; the image is the library's; without a vocabulary it refuses before
    /// loading, and --bert-vocab without --config is refused.
    func testTxt2ImgRunsCompVisLDMBert() throws {
        let dir = try tempDir()
        let src = fixtures.appendingPathComponent("compvis-ldm-bert")
        let yaml = src.appendingPathComponent("txt2img-tiny.yaml").path
        let out = dir.appendingPathComponent("cv.png")
        let common = ["txt2img", "--prompt", "a red cube", "--steps", "2", "--seed", "4", "--cfg-scale", "5", "--width", "16",
                      "--height", "16", "--quiet"]
        let (s, e) = try run(common + ["--model", src.appendingPathComponent("model.ckpt").path, "--config", yaml, "--output", out.path])
        XCTAssertEqual(s, 0, e)
        let json = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: src.appendingPathComponent("txt2img-tiny.json"))) as? [String: Any])
        let bundle = try ModelBundle.load(checkpoint: src.appendingPathComponent("model.ckpt"), yaml: json)
        let want = try LDMTextToImagePipeline(bundle: bundle).textToImage(PromptOptions(prompt: "a red cube", guidanceScale: 5, width: 16, height: 16),
                                                                          SamplingOptions(steps: 2), generator: TorchGenerator(seed: 4))
        XCTAssertEqual(try ImageIO.loadRGB(path: out.path).pixels, want.images[0].pixels)

        let lone = dir.appendingPathComponent("model.ckpt")
        try FileManager.default.copyItem(at: src.appendingPathComponent("model.ckpt"), to: lone)
        let (s2, e2) = try run(common + ["--model", lone.path, "--config", yaml, "--output", dir.appendingPathComponent("a.png").path])
        XCTAssertNotEqual(s2, 0); XCTAssertTrue(e2.contains("--bert-vocab"), e2)
        let withVocab = dir.appendingPathComponent("b.png")
        let (s3, e3) = try run(common + ["--model", lone.path, "--config", yaml, "--bert-vocab", src.appendingPathComponent("vocab.txt").path,
                                         "--output", withVocab.path])
        XCTAssertEqual(s3, 0, e3)
        XCTAssertEqual(try ImageIO.loadRGB(path: withVocab.path).pixels, want.images[0].pixels)
        let (s4, e4) = try run(common + ["--model", lone.path, "--output", dir.appendingPathComponent("c.png").path])
        XCTAssertNotEqual(s4, 0); XCTAssertTrue(e4.contains("--config"), e4)
        let (s5, e5) = try run(common + ["--model", fixtures.appendingPathComponent("ldm-text2img/pipeline").path, "--bert-vocab",
                                         src.appendingPathComponent("vocab.txt").path, "--output", dir.appendingPathComponent("d.png").path])
        XCTAssertNotEqual(s5, 0); XCTAssertTrue(e5.contains("--bert-vocab is for"), e5)
    }
}

extension GenerationCLITests {
    /// `ldm upscale --config bsr.yaml --model model.ckpt` on a CompVis bsr_sr-shaped checkpoint
    /// (tools/fixtures/compvis_bsr_sr.py): the YAML is parsed by the command and the image is the library's.
    func testUpscaleRunsCompVisBSR() throws {
        let dir = try tempDir()
        let src = fixtures.appendingPathComponent("compvis-bsr-sr")
        let out = dir.appendingPathComponent("up.png")
        let (s, e) = try run(["upscale", "--model", src.appendingPathComponent("model.ckpt").path, "--config", src.appendingPathComponent("bsr-tiny.yaml").path,
                              "--init-image", src.appendingPathComponent("lowres.png").path, "--steps", "2", "--seed", "5", "--quiet", "--output", out.path])
        XCTAssertEqual(s, 0, e)
        let json = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: src.appendingPathComponent("bsr-tiny.json"))) as? [String: Any])
        let bundle = try ModelBundle.load(checkpoint: src.appendingPathComponent("model.ckpt"), yaml: json)
        let want = try LatentDiffusionPipeline(bundle: bundle).upscale(try ImageIO.loadRGB(path: src.appendingPathComponent("lowres.png").path),
                                                                       SamplingOptions(steps: 2), generator: TorchGenerator(seed: 5))
        let got = try ImageIO.loadRGB(path: out.path)
        XCTAssertEqual(got.width, 128); XCTAssertEqual(got.pixels, want.images[0].pixels)
    }
}

extension GenerationCLITests {
    /// `ldm semantic --config semantic.yaml --model model.ckpt --segmentation labels.png` on a CompVis
    /// semantic_synthesis-shaped checkpoint (tools/fixtures/compvis_semantic.py): the image is the library's (and
    /// CompVis'), --width/--height resize the map with nearest-neighbour; bad inputs fail with a message, exit non-zero
    /// and write nothing.
    func testSemanticRunsCompVisSemanticSynthesis() throws {
        let dir = try tempDir()
        let src = fixtures.appendingPathComponent("compvis-semantic")
        let model = src.appendingPathComponent("model.ckpt").path, config = src.appendingPathComponent("semantic-tiny.yaml").path
        let labels = src.appendingPathComponent("labels-palette.png").path
        func semantic(_ out: URL, _ extra: [String]) throws -> (Int32, String) {
            try run(["semantic", "--model", model, "--config", config, "--steps", "5", "--eta", "1", "--seed", "3", "--quiet", "--output", out.path] + extra)
        }
        let out = dir.appendingPathComponent("s.png")
        let (s, e) = try semantic(out, ["--segmentation", labels])
        XCTAssertEqual(s, 0, e)
        XCTAssertEqual(try ImageIO.loadRGB(path: out.path).pixels, try ImageIO.loadRGB(path: src.appendingPathComponent("ddim_eta1.png").path).pixels,
                       "CompVis' DDIMSampler image (tools/fixtures/compvis_semantic.py case ddim_eta1)")
        XCTAssertEqual(try parameters(out).extraValue("Segmentation"), "labels-palette.png")

        // A 16x16 map (its class indices) upsized to 32x32 with nearest-neighbour: the library on the resized map.
        let gray = try ImageIO.loadLabelMap(path: labels)
        let small = try gray.resized(width: 16, height: 16, filter: .nearest)
        let smallPath = dir.appendingPathComponent("small.png")
        try small.writePNG(to: smallPath.path)
        let big = dir.appendingPathComponent("big.png")
        let (s2, e2) = try semantic(big, ["--segmentation", smallPath.path, "--width", "32", "--height", "32"])
        XCTAssertEqual(s2, 0, e2)
        let json = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: src.appendingPathComponent("semantic-tiny.json"))) as? [String: Any])
        let bundle = try ModelBundle.load(checkpoint: src.appendingPathComponent("model.ckpt"), yaml: json)
        let want = try LatentDiffusionPipeline(bundle: bundle).semanticSynthesis(try small.resized(width: 32, height: 32, filter: .nearest),
                                                                                 SamplingOptions(steps: 5, eta: 1), generator: TorchGenerator(seed: 3))
        XCTAssertEqual(try ImageIO.loadRGB(path: big.path).pixels, want.images[0].pixels)

        var bad = gray
        bad.pixels[2 * 32 + 9] = 7
        let badPath = dir.appendingPathComponent("bad.png")
        try bad.writePNG(to: badPath.path)
        let odd = dir.appendingPathComponent("odd.png")
        try GrayImage(width: 30, height: 32, pixels: Array(repeating: 1, count: 960)).writePNG(to: odd.path)
        let colour = dir.appendingPathComponent("colour.png")
        try RGBImage(width: 32, height: 32, fill: (10, 20, 30)).writePNG(to: colour.path)
        let bsr = fixtures.appendingPathComponent("compvis-bsr-sr")
        let x = dir.appendingPathComponent("x.png")
        let failures: [([String], String)] = [
            (["--segmentation", badPath.path], "segmentation map \(badPath.path): pixel (9, 2) has class index 7"),
            (["--segmentation", badPath.path, "--label-offset", "-300"], "--label-offset must be in -255...255"),
            (["--segmentation", odd.path], "its width 30 is not a multiple of 4"),
            (["--segmentation", labels, "--width", "30"], "image width 30 is not a multiple of 4"),
            (["--segmentation", colour.path], "has colour (10, 20, 30)"),
            (["--segmentation", dir.appendingPathComponent("missing.png").path], "does not exist"),
            (["--segmentation", model], "not a PNG or JPEG image"),
            (["--segmentation", labels, "--config", bsr.appendingPathComponent("bsr-tiny.yaml").path], "is not a semantic-synthesis model"),
            (["--segmentation", labels, "--steps", "0"], "steps must be >= 1"),
        ]
        for (args, message) in failures {
            let (status, err) = try semantic(x, args)
            XCTAssertNotEqual(status, 0, "\(args)")
            XCTAssertTrue(err.contains(message), "\(args): \(err)")
            XCTAssertFalse(FileManager.default.fileExists(atPath: x.path), "\(args)")
        }
        let (s3, e3) = try run(["semantic", "--model", model, "--segmentation", labels, "--output", x.path])
        XCTAssertNotEqual(s3, 0); XCTAssertTrue(e3.contains("pass their YAML with --config"), e3)
        // An existing output is kept unless --overwrite.
        let before = try Data(contentsOf: out)
        let (s4, e4) = try semantic(out, ["--segmentation", labels, "--seed", "4"])
        XCTAssertNotEqual(s4, 0); XCTAssertTrue(e4.contains("already exists (pass --overwrite"), e4)
        XCTAssertEqual(try Data(contentsOf: out), before)
        // The other commands point to `ldm semantic`.
        for command in [["upscale", "--init-image", labels], ["sample"]] {
            let (status, err) = try run(command + ["--model", model, "--config", config, "--output", x.path])
            XCTAssertNotEqual(status, 0); XCTAssertTrue(err.contains("use `ldm semantic`"), "\(command): \(err)")
        }
    }
}
