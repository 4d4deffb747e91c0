import Checkpoints
import Foundation
import Imaging
import Pipelines
import TensorCore
import XCTest
@testable import Training

// Data-parallel training, part 3: `ldm train lora` under `mpirun -np 2` (the adapters are the only trained parameters,
// so only their gradients are all-reduced). The same config and seed give, on 1 and 2 ranks, the same loss curve,
// checkpoints (adapters, AdamW moments, generator) and exported kohya LoRA file to float32 reduction-order tolerance
// (DataParallelTests' tolerances); a run resumed with another number of ranks (one process, then two, with cached
// latents) writes the same file; a killed rank ends the job with mpirun's and rank 0's messages, leaves no LoRA file
// and no partial checkpoint, and the run resumes in one process. The mpirun tests skip, saying why, without Open MPI.

extension DataParallelTests {
    /// Eight 16x16 captioned images in one folder (kohya's layout): two global batches of 4 per epoch.
    func writeCaptionedImages(_ dir: URL) throws {
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        for i in 0..<8 {
            var img = try RGBImage(width: 16, height: 16, fill: (UInt8(30 + 25 * i), UInt8(200 - 20 * i), UInt8(60 + 10 * (i % 3))))
            for x in 0..<16 { img.pixels[3 * (16 * ((x + i) % 16) + x)] = 255 }
            try img.writePNG(to: dir.appendingPathComponent("\(i).png").path)
            try "a \(["red", "blue", "green"][i % 3]) \(i % 2 == 0 ? "cat" : "dog")"
                .write(to: dir.appendingPathComponent("\(i).txt"), atomically: true, encoding: .utf8)
        }
    }

    /// A LoRA config on the tiny SD pipeline fixture: UNet attention, projections and feed-forward plus the text
    /// encoder, caption dropout (draws), gradient accumulation, clipping; float32 export so the file compares closely.
    func loraConfig(data: URL, _ extra: [String: Any] = [:]) throws -> URL {
        try writeTrainConfig([
            "base_model": tinySDFolder.path, "data_dir": data.path, "max_steps": 4, "rank": 2, "alpha": 1,
            "learning_rate": 1e-2, "batch_size": 4, "gradient_accumulation_steps": 2, "seed": 11, "resolution": 16,
            "targets": ["attention", "projections", "feed_forward"], "train_text_encoder": true, "cond_drop_prob": 0.3,
            "max_grad_norm": 1.0, "save_every": 2, "save_dtype": "float32", "output_name": "lora",
        ], extra, besides: data)
    }

    /// The two exported LoRA files hold the same tensors to the data-parallel tolerance and the same metadata.
    func assertSameLoRAFile(_ a: URL, _ b: URL, file: StaticString = #filePath, line: UInt = #line) throws {
        let fa = try SafeTensors(url: a), fb = try SafeTensors(url: b)
        XCTAssertEqual(fa.metadata, fb.metadata, file: file, line: line)
        XCTAssertEqual(Set(fa.records.map(\.name)), Set(fb.records.map(\.name)), file: file, line: line)
        var worst: Float = 0
        for r in fa.records {
            guard let rb = fb[r.name] else { continue }
            worst = max(worst, assertClose(try rb.tensor().float32().toArray(), try r.tensor().float32().toArray(),
                                           tol: dataParallelTolerance, floor: 1e-12, r.name, file: file, line: line))
        }
        print("DataParallelTests: LoRA file \(a.path) vs \(b.path): \(fa.records.count) tensors, worst rel err \(worst)")
    }

    func testLoRATrainingMatchesOneProcessAndResumesWithOtherRankCount() throws {
        let mpirun = try requireMPI()
        let work = try tempDirectory("ddp-lora")
        defer { try? FileManager.default.removeItem(at: work) }
        let data = work.appendingPathComponent("data")
        try writeCaptionedImages(data)
        let four = try loraConfig(data: data)
        let one = work.appendingPathComponent("one"), ranks2 = work.appendingPathComponent("two")
        let (s1, o1) = try run(["train", "lora", "--config", four.path, "--run-dir", one.path])
        XCTAssertEqual(s1, 0, o1)
        let (s2, o2) = try run(["train", "lora", "--config", four.path, "--run-dir", ranks2.path], ranks: 2, mpirun: mpirun)
        XCTAssertEqual(s2, 0, o2)
        XCTAssertTrue(o2.contains("2 ranks (MPI) x 2 examples of each batch of 4"), o2)
        XCTAssertTrue(o2.contains("all-reduce of"), o2)
        for line in o2.split(separator: "\n") where line.contains("steps/s") { print("DataParallelTests: lora np 2: \(line)") }
        for step in ["00000002", "00000004"] {
            try assertSameCheckpoint(one.appendingPathComponent("checkpoints/step-\(step).safetensors"),
                                     ranks2.appendingPathComponent("checkpoints/step-\(step).safetensors"))
        }
        for key in ["loss", "grad_norm"] {
            let a = try losses(one, key), b = try losses(ranks2, key)
            XCTAssertEqual(a.count, 4)
            assertClose(b, a, tol: curveTolerance, "lora \(key) curve")
            print("DataParallelTests: lora \(key) N=1 \(a)\n                   N=2 \(b)")
        }
        try assertSameLoRAFile(one.appendingPathComponent("lora.safetensors"), ranks2.appendingPathComponent("lora.safetensors"))
        // Only rank 0 wrote: two checkpoints, the file, no temporary files.
        let files = try FileManager.default.contentsOfDirectory(atPath: ranks2.appendingPathComponent("checkpoints").path)
        XCTAssertEqual(files.sorted(), ["step-00000002.safetensors", "step-00000004.safetensors"])
        XCTAssertFalse(try FileManager.default.contentsOfDirectory(atPath: ranks2.path).contains { $0.contains(".tmp") })

        // Steps 1-2 in one process, 3-4 resumed on two ranks, with latents cached (the cache built by one process,
        // read by both ranks).
        let mixed = work.appendingPathComponent("mixed")
        let cachedTwo = try loraConfig(data: data, ["max_steps": 2, "cache_latents": true])
        let cachedFour = try loraConfig(data: data, ["cache_latents": true])
        let (s3, o3) = try run(["train", "lora", "--config", cachedTwo.path, "--run-dir", mixed.path])
        XCTAssertEqual(s3, 0, o3)
        let (s4, o4) = try run(["train", "lora", "--config", cachedFour.path, "--resume", mixed.path], ranks: 2, mpirun: mpirun)
        XCTAssertEqual(s4, 0, o4)
        XCTAssertTrue(o4.contains("resumed \(mixed.path) at step 2"), o4)
        try assertSameCheckpoint(one.appendingPathComponent("checkpoints/step-00000004.safetensors"),
                                 mixed.appendingPathComponent("checkpoints/step-00000004.safetensors"))
        assertClose(try losses(mixed, "loss"), try losses(one, "loss"), tol: curveTolerance, "lora 1-then-2 loss curve")
        try assertSameLoRAFile(one.appendingPathComponent("lora.safetensors"), mixed.appendingPathComponent("lora.safetensors"))
    }

    func testAKilledRankEndsLoRATrainingAndTheRunResumes() throws {
        let mpirun = try requireMPI()
        let work = try tempDirectory("ddp-lora-kill")
        defer { try? FileManager.default.removeItem(at: work) }
        let data = work.appendingPathComponent("data")
        try writeCaptionedImages(data)
        let long = try loraConfig(data: data, ["max_steps": 400, "gradient_accumulation_steps": 1])
        let runDir = work.appendingPathComponent("run")
        // Past the first checkpoint (step 2), then rank 1 dies as a crash would.
        try killRankOneDuring(mpirun, ["train", "lora", "--config", long.path, "--run-dir", runDir.path], runDir: runDir)
        // No LoRA file from the killed job; the last checkpoint is whole.
        let lora = runDir.appendingPathComponent("lora.safetensors")
        XCTAssertFalse(FileManager.default.fileExists(atPath: lora.path))
        let saved = try XCTUnwrap(Trainer.latestCheckpoint(in: runDir))
        let step = try XCTUnwrap(Int(try XCTUnwrap(SafeTensors(url: saved).metadata?["step"])))
        XCTAssertGreaterThanOrEqual(step, 2)
        XCTAssertLessThan(step, 400)
        // The run continues in one process and writes a LoRA file our strict loader reads.
        let short = try loraConfig(data: data, ["max_steps": step + 2, "gradient_accumulation_steps": 1])
        let (status, resumed) = try run(["train", "lora", "--config", short.path, "--resume", runDir.path])
        XCTAssertEqual(status, 0, resumed)
        XCTAssertTrue(resumed.contains("resumed \(runDir.path) at step \(step)"), resumed)
        XCTAssertEqual(try losses(runDir, "loss").count, step + 2)
        let file = try LoRAFile(url: lora)
        XCTAssertEqual(file.metadata["ss_steps"], String(step + 2))
        let files = try FileManager.default.contentsOfDirectory(atPath: runDir.appendingPathComponent("checkpoints").path)
        XCTAssertFalse(files.contains { $0.contains(".tmp") }, "\(files)")
    }
}
