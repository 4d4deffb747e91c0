// DoRA apply (Pipelines/LoRADoRA.swift) against the references (tools/fixtures/dora.py) on the tiny SD folder: a PEFT
// DoRA file merged at 0.7 gives the weights diffusers' load_lora_weights + fuse_lora(0.7) leaves and its image; kohya
// files with a per-input-column dora_scale give AUTOMATIC1111's apply_weight_decompose at multiplier 0.8, with a
// per-output-row dora_scale diffusers' fuse of that file; unmerge restores every weight bit for bit; a DoRA module
// without its base weight is refused.
import Checkpoints
import Foundation
import Pipelines
import TensorCore
import XCTest

final class DoRATests: XCTestCase {
    struct Case: Decodable { let name: String; let lora: String; let weight: Float; let prompt: String; let sampler: String; let steps: Int; let cfg: Double; let seed: UInt64 }
    let dir = fixtures.appendingPathComponent("lora")

    func file(_ name: String) throws -> LoRAFile { try LoRAFile(url: dir.appendingPathComponent(name)) }

    /// The reference deltas of one case ("peft:", "kohya:", "kohya_out:"), keyed by our parameter names.
    func reference(_ prefix: String, names: Set<String>) throws -> [String: [Float]] {
        var out: [String: [Float]] = [:]
        for (k, r) in try CheckpointFile.open(dir.appendingPathComponent("dora_deltas.safetensors")).tensors where k.hasPrefix(prefix) {
            var name = String(k.dropFirst(prefix.count))
            // transformers 5 names the CLIP weights without text_model.
            if !names.contains(name), name.hasPrefix("text_encoder.") { name = "text_encoder.text_model." + name.dropFirst(13) }
            out[name] = try r.floats()
        }
        return out
    }

    func testMergedWeightsMatchTheReferences() throws {
        let bundle = try ModelBundle.load(fixtures.appendingPathComponent("tiny-sd"))
        let before = bundle.loraTargets.mapValues { $0.contiguous().toArray() }
        let names = Set(before.keys)
        for (lora, weight, prefix, count) in [("dora_peft.safetensors", Float(0.7), "peft:", 0), ("dora_kohya.safetensors", 0.8, "kohya:", 4),
                                              ("dora_kohya_out.safetensors", 1, "kohya_out:", 3)] {
            let want = try reference(prefix, names: names)
            if count > 0 { XCTAssertEqual(want.count, count, lora) } else { XCTAssertGreaterThan(want.count, 10, lora) }
            try bundle.mergeLoRAs([(try file(lora), weight)])
            let after = bundle.loraTargets.mapValues { $0.contiguous().toArray() }
            XCTAssertEqual(Set(after.filter { before[$0.key] != $0.value }.keys), Set(want.keys), lora)
            var worst: Float = 0
            for (k, d) in want {
                let got = zip(try XCTUnwrap(after[k], k), try XCTUnwrap(before[k])).map { $0 - $1 }
                let w = max(try XCTUnwrap(before[k]).map(abs).max() ?? 0, 1e-6)
                let err = (zip(got, d).map { abs($0 - $1) }.max() ?? 0) / w
                worst = max(worst, err)
                XCTAssertLessThanOrEqual(err, 2e-6, "\(lora) \(k): error \(err) of the weight's largest value")
            }
            print("DoRA \(lora): \(want.count) weights, worst error \(worst) of the weight's largest value")
            bundle.unmergeLoRAs()
            for (k, v) in bundle.loraTargets { XCTAssertEqual(v.contiguous().toArray().map(\.bitPattern), before[k]?.map(\.bitPattern), k) }
        }
    }

    func testImageMatchesDiffusers() throws {
        let cases = try JSONDecoder().decode([Case].self, from: Data(contentsOf: dir.appendingPathComponent("dora_cases.json")))
        XCTAssertEqual(cases.count, 1)
        let refs = try CheckpointFile.open(dir.appendingPathComponent("dora_outputs.safetensors")).tensors
        for c in cases {
            let bundle = try ModelBundle.load(fixtures.appendingPathComponent("tiny-sd"))
            try bundle.mergeLoRAs([(try file(c.lora), c.weight)])
            let pipe = try StableDiffusionPipeline(bundle: bundle)
            let ours = try pipe.textToImage(PromptOptions(prompt: c.prompt, guidanceScale: c.cfg, width: 16, height: 16),
                                            SamplingOptions(sampler: c.sampler, steps: c.steps), generator: TorchGenerator(seed: c.seed)).images[0].pixels
            let ref = try XCTUnwrap(refs[c.name]).floats().map { UInt8((min(max($0, 0), 1) * 255).rounded(.toNearestOrEven)) }
            let db = psnr(ours, ref)
            print("PSNR \(c.name): \(db) dB")
            XCTAssertGreaterThanOrEqual(db, 45, c.name)
        }
    }

    func testDoRANeedsTheBaseWeight() throws {
        let bundle = try ModelBundle.load(fixtures.appendingPathComponent("tiny-sd"))
        XCTAssertThrowsError(try LoRA.deltas(try file("dora_kohya.safetensors"), baseShapes: bundle.loraTargets.mapValues(\.shape), weight: 1)) { e in
            XCTAssertTrue("\(e)".contains("is a DoRA module"), "\(e)")
        }
    }
}
