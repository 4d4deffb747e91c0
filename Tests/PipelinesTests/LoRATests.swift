// LoRA apply against diffusers 0.42 + peft (tools/fixtures/lora.py) on the tiny SD folder: PEFT files written by
// save_lora_weights and the same LoRA under kohya names give diffusers' load_lora_weights + fuse_lora images
// (Euler a, 3 steps, seed 70; PSNR >= 45 dB as PipelineParityTests); LyCORIS LoCon-mid / LoHa / LoKr deltas equal the
// generator's torch rebuild of the A1111 definitions (max error <= 1e-5 * scale) and the image with them merged;
// unmerge restores every weight bit for bit; unknown keys and parts are errors naming them.
import Checkpoints
import Foundation
import Pipelines
import TensorCore
import XCTest

final class LoRATests: XCTestCase {
    struct Case: Decodable { let name: String; let lora: String?; let weight: Float?; let prompt: String; let sampler: String; let steps: Int; let cfg: Double; let seed: UInt64 }
    struct Doc: Decodable { let cases: [Case]; let addnet_sha256: [String: String] }
    let dir = fixtures.appendingPathComponent("lora")

    func doc() throws -> Doc { try JSONDecoder().decode(Doc.self, from: Data(contentsOf: dir.appendingPathComponent("cases.json"))) }

    /// A fresh copy of the tiny SD model (merging changes its weights).
    func freshBundle() throws -> ModelBundle { try ModelBundle.load(fixtures.appendingPathComponent("tiny-sd")) }

    func generate(_ bundle: ModelBundle, _ c: Case) throws -> [UInt8] {
        let pipe = try StableDiffusionPipeline(bundle: bundle)
        return try pipe.textToImage(PromptOptions(prompt: c.prompt, guidanceScale: c.cfg, width: 16, height: 16),
                                    SamplingOptions(sampler: c.sampler, steps: c.steps), generator: TorchGenerator(seed: c.seed)).images[0].pixels
    }

    func reference(_ name: String) throws -> [UInt8] {
        let f = try CheckpointFile.open(dir.appendingPathComponent("outputs.safetensors"))
        return try XCTUnwrap(f.tensors[name]).floats().map { UInt8((min(max($0, 0), 1) * 255).rounded(.toNearestOrEven)) }
    }

    func testMergedImagesMatchDiffusers() throws {
        let d = try doc()
        XCTAssertEqual(d.cases.count, 4)
        let bundle = try freshBundle()
        for c in d.cases {
            if let lora = c.lora {
                let applied = try bundle.mergeLoRAs([(try LoRAFile(url: dir.appendingPathComponent(lora)), try XCTUnwrap(c.weight))])
                XCTAssertFalse(applied.changedParameters.isEmpty)
            }
            let db = psnr(try generate(bundle, c), try reference(c.name))
            print("PSNR \(c.name): \(db) dB")
            XCTAssertGreaterThanOrEqual(db, 45, c.name)
            bundle.unmergeLoRAs()
        }
    }

    func testLyCORISDeltasMatchReference() throws {
        let bundle = try freshBundle()
        let shapes = bundle.loraTargets.mapValues(\.shape)
        let got = try LoRA.deltas(try LoRAFile(url: dir.appendingPathComponent("lycoris.safetensors")), baseShapes: shapes, weight: 1)
        let want = try CheckpointFile.open(dir.appendingPathComponent("lycoris_deltas.safetensors")).tensors
        XCTAssertEqual(Set(got.keys), Set(want.keys))
        for (k, r) in want {
            let w = try r.floats(), g = try XCTUnwrap(got[k], k)
            XCTAssertEqual(g.count, w.count, k)
            let scale = max(1, w.map { abs($0) }.max() ?? 0)
            let err = zip(g, w).map { abs($0 - $1) }.max() ?? 0
            XCTAssertLessThanOrEqual(err, 1e-5 * scale, "\(k): max error \(err)")
        }
        // PEFT (metadata alpha / r) and kohya (.alpha / rank) files describe the same deltas
        let peft = try LoRA.deltas(try LoRAFile(url: dir.appendingPathComponent("peft.safetensors")), baseShapes: shapes, weight: 0.5)
        let kohya = try LoRA.deltas(try LoRAFile(url: dir.appendingPathComponent("kohya.safetensors")), baseShapes: shapes, weight: 0.5)
        XCTAssertEqual(peft.count, 64)
        XCTAssertEqual(Set(peft.keys), Set(kohya.keys))
        for (k, v) in peft { XCTAssertEqual(v, kohya[k], k) }
    }

    func testUnmergeRestoresWeightsBitForBit() throws {
        let bundle = try freshBundle()
        let before = bundle.loraTargets.mapValues { $0.contiguous().toArray() }
        try bundle.mergeLoRAs([(try LoRAFile(url: dir.appendingPathComponent("kohya.safetensors")), 1.3),
                               (try LoRAFile(url: dir.appendingPathComponent("lycoris.safetensors")), -0.6)])
        XCTAssertThrowsError(try bundle.mergeLoRAs([])) // already merged
        let merged = bundle.loraTargets.mapValues { $0.contiguous().toArray() }
        XCTAssertEqual(before.filter { merged[$0.key] != $0.value }.count, 68) // 64 LoRA + 8 LyCORIS weights, 4 shared
        bundle.unmergeLoRAs()
        XCTAssertNil(bundle.appliedLoRAs)
        for (k, v) in bundle.loraTargets {
            XCTAssertEqual(v.contiguous().toArray().map(\.bitPattern), before[k]?.map(\.bitPattern), k)
        }
    }

    func testStrictKeysAndBadFiles() throws {
        let bundle = try freshBundle()
        let tmp = FileManager.default.temporaryDirectory.appendingPathComponent("lora-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: tmp, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: tmp) }
        func file(_ keys: [(String, [Int])]) throws -> LoRAFile {
            let url = tmp.appendingPathComponent("f\(UUID().uuidString).safetensors")
            try SafeTensors.write(keys.map { SafeTensorsEntry(name: $0.0, dtype: .F32, shape: $0.1,
                                                               bytes: Data(count: 4 * $0.1.reduce(1, *))) }, to: url)
            return try LoRAFile(url: url)
        }
        let q = "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q"
        let cases: [([(String, [Int])], String)] = [
            ([("lora_unet_no_such_block.lora_down.weight", [2, 16]), ("lora_unet_no_such_block.lora_up.weight", [16, 2])], "lora_unet_no_such_block.lora_down.weight' maps to no module"),
            ([("\(q).lora_down.weight", [2, 16]), ("\(q).lora_up.weight", [16, 2]), ("\(q).diff", [16, 16])], "'diff' is not a supported"),
            ([("\(q).lora_down.weight", [2, 16]), ("\(q).lora_up.weight", [16, 2]), ("\(q).dora_scale", [3, 1])], "dora_scale [3, 1] fits neither"),
            ([("\(q).lora_down.weight", [2, 8]), ("\(q).lora_up.weight", [16, 2])], "has 128 values"),
            ([("\(q).lora_down.weight", [2, 16])], "lacks lora_up.weight"),
            ([("unet.down_blocks.9.attn.lora_A.weight", [2, 16])], "'unet.down_blocks.9.attn.lora_A.weight' maps to no module"),
            ([("model.something", [2])], "no known LoRA format"),
        ]
        let before = bundle.loraTargets.mapValues { $0.contiguous().toArray() }
        for (keys, message) in cases {
            XCTAssertThrowsError(try bundle.mergeLoRAs([(try file(keys), 1)])) { e in
                XCTAssertTrue("\(e)".contains(message), "\(e)")
            }
        }
        XCTAssertNil(bundle.appliedLoRAs)
        for (k, v) in bundle.loraTargets { XCTAssertEqual(v.contiguous().toArray(), before[k], k) }
        XCTAssertThrowsError(try LoRAFile(url: tmp.appendingPathComponent("missing.safetensors")))
    }

    func testPromptTagsAndHashes() throws {
        let (text, tags) = try LoRAPrompt.extract("a cat <lora:kohya:0.7>, sitting<lora:peft>")
        XCTAssertEqual(text, "a cat , sitting")
        XCTAssertEqual(tags, [LoRATag(name: "kohya", weight: 0.7), LoRATag(name: "peft", weight: 1)])
        XCTAssertThrowsError(try LoRAPrompt.extract("<lora:x:heavy>"))
        XCTAssertThrowsError(try LoRAPrompt.extract("<lora::1>"))
        XCTAssertEqual(try LoRAPrompt.resolve("kohya", in: dir).lastPathComponent, "kohya.safetensors")
        XCTAssertThrowsError(try LoRAPrompt.resolve("nothing", in: dir))
        for (f, sha) in try doc().addnet_sha256 {
            XCTAssertEqual(try LoRAFile(url: dir.appendingPathComponent(f)).shortHash(), String(sha.prefix(12)), f)
        }
        // FIPS 180-2 appendix B test vectors (one and two blocks) and a multi-block input
        XCTAssertEqual(SHA256.hex(Data("abc".utf8)), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        XCTAssertEqual(SHA256.hex(Data("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".utf8)),
                       "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
    }

    /// A1111's extra tag parameters (extra_networks_lora.py): <lora:NAME:TE:UNET>, te= / unet= (the UNet weight
    /// defaults to the text encoder's); the UNet's modules take the UNet weight, the text encoder's the TE weight.
    func testTagTextEncoderAndUNetWeights() throws {
        let cases: [(String, LoRATag)] = [
            ("<lora:a:0.8:0.5>", LoRATag(name: "a", weight: 0.8, unetWeight: 0.5)),
            ("<lora:a:te=0.3:unet=1.2>", LoRATag(name: "a", weight: 0.3, unetWeight: 1.2)),
            ("<lora:a:unet=0.4>", LoRATag(name: "a", weight: 1, unetWeight: 0.4)),
            ("<lora:a:te=0.5>", LoRATag(name: "a", weight: 0.5)),          // UNet follows TE
            ("<lora:a:0.7:te=0.2>", LoRATag(name: "a", weight: 0.2)),      // te= overrides the positional weight, UNet follows
            ("<lora:a:0.6:0.6>", LoRATag(name: "a", weight: 0.6)),
            ("<lora: a : 0.9 >", LoRATag(name: "a", weight: 0.9)),
        ]
        for (prompt, tag) in cases { XCTAssertEqual(try LoRAPrompt.extract("x " + prompt).tags, [tag], prompt) }
        for (bad, message) in [("<lora:a:1:1:8>", "dyn"), ("<lora:a:dyn=8>", "dyn"), ("<lora:a:scale=2>", "unknown parameter 'scale'"),
                               ("<lora:a:te=x>", "'x' is not a number"), ("<lora:a:1:nan>", "'nan' is not a number"), ("<lora:te=1>", "has no name")] {
            XCTAssertThrowsError(try LoRAPrompt.extract(bad), bad) { XCTAssertTrue("\($0)".contains(message), "\(bad): \($0)") }
        }
        let shapes = try freshBundle().loraTargets.mapValues(\.shape)
        let file = try LoRAFile(url: dir.appendingPathComponent("kohya.safetensors"))
        let split = try LoRA.deltas(file, baseShapes: shapes, weight: 0.3, unetWeight: 0.9)
        let te = try LoRA.deltas(file, baseShapes: shapes, weight: 0.3), unet = try LoRA.deltas(file, baseShapes: shapes, weight: 0.9)
        XCTAssertTrue(split.keys.contains { $0.hasPrefix("text_encoder.") } && split.keys.contains { $0.hasPrefix("unet.") })
        for (k, v) in split { XCTAssertEqual(v, k.hasPrefix("unet.") ? unet[k] : te[k], k) }
    }
}
