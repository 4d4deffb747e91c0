import Checkpoints
import Diffusion
import Foundation
import Imaging
import TensorCore
import UNetModels
import XCTest
@testable import Training

// Data-parallel training (Training/DataParallel.swift): shards of a batch and of its random draws reassemble the
// one-process batch, and `ldm train ldm|autoencoder` under `mpirun -np 2` follows the one-process run (loss curve,
// weights, EMA, optimizer state) to float32 reduction-order tolerance, resumes with another number of ranks, and a
// failing rank ends the job with a message. The mpirun tests skip, saying why, where Open MPI is not installed.

/// float32 reduction order. The N-rank gradient is a sum of N shard gradients: a different summation order than one
/// whole-batch backward, about 1e-7 relative per value. The losses and gradient norms are sums of many positive
/// terms and keep that size (observed ~2e-7), so their curves are held to 1e-5. The weights are held less tightly:
/// AdamW moves each weight by about lr * g / (|g| + eps), and for a component whose gradient is mostly cancellation,
/// the same absolute round-off is a large relative error that AdamW turns into a visible difference in the step.
/// After 3-6 steps at lr 2e-3, this reaches 5e-5 (2 ranks) to 1e-4 (4 ranks) of a tensor's largest value; 5e-4
/// leaves room. An error in the data-parallel logic moves far more than that. Per-rank draws or shards would change
/// the losses by 1e-2 or more. A sum instead of a mean would double the logged gradient norm and AdamW's first
/// moments, and both are compared.
let curveTolerance: Float = 1e-5
let dataParallelTolerance: Float = 5e-4

final class DataParallelTests: XCTestCase {
    // MARK: - In-process: shards

    func testShardsReassembleTheBatchAndItsDraws() throws {
        let images = Tensor.randn([8, 4, 4, 4], generator: TorchGenerator(seed: 3))
        let dataset = try TensorDataset(images: images, labels: [0, 1, 2, 0, 1, 2, 0, 1])
        let sampler = try BatchSampler(dataset: dataset, batchSize: 4, seed: 7)
        let whole = try sampler.batch(epoch: 1, index: 1)
        let parts = try (0..<2).map { try sampler.batch(epoch: 1, index: 1, shard: BatchShard(globalBatch: 4, rank: $0, count: 2)) }
        XCTAssertEqual(concat(parts.map(\.images), axis: 0).toArray(), whole.images.toArray())
        XCTAssertEqual(parts.flatMap { $0.classLabels ?? [] }, whole.classLabels)
        XCTAssertThrowsError(try BatchShard(globalBatch: 6, rank: 0, count: 4)) { e in
            XCTAssertTrue("\(e)".contains("not divisible by the 4 ranks"), "\(e)")
        }

        // The loss's draws (timesteps, noise, dropout) for a shard are the rows of the one-process draws, and the
        // generator ends in the same state either way (so every rank's generator stays in step).
        let loss = try DiffusionLoss(schedule: NoiseSchedule(schedule: .scaledLinear, betaStart: 0.00085, betaEnd: 0.012),
                                     condDropProb: 0.5, nullClass: 2)
        let model = try UNet2DConditionModel.random(config: UNetConfig.decode(Data(tinyClassUNetConfig.utf8)), seed: 1)
        let x0 = Tensor.randn([4, 4, 8, 8], generator: TorchGenerator(seed: 4))
        let g = TorchGenerator(seed: 9)
        let full = try loss(model: model, latents: x0, conditioning: .classLabels([0, 1, 2, 0]), generator: g)
        for rank in 0..<2 {
            let shard = try BatchShard(globalBatch: 4, rank: rank, count: 2)
            let gr = TorchGenerator(seed: 9)
            let out = try loss(model: model, latents: shard.rows(x0), conditioning: .classLabels(shard.rows([0, 1, 2, 0])),
                               generator: gr, shard: shard)
            XCTAssertEqual(out.timesteps, shard.rows(full.timesteps))
            XCTAssertEqual(out.dropped, shard.rows(full.dropped))
            XCTAssertEqual(out.noise.toArray(), shard.rows(full.noise).toArray())
            XCTAssertEqual(gr.state, g.state)
        }
        XCTAssertTrue(full.dropped.contains(true) && full.dropped.contains(false), "the seed should drop some entries")
    }

    func testOneProcessIsTheIdentity() throws {
        let comm = SingleProcess()
        var v: [Float] = [1, 2, 3]
        try v.withUnsafeMutableBufferPointer { try comm.allReduceSum($0) }
        XCTAssertEqual(v, [1, 2, 3])
        let p = Tensor([1, 2], shape: [2]).requiringGrad()
        p.grad = Tensor([0.5, -1], shape: [2])
        try GradientAverager(communicator: comm).average([p])
        XCTAssertEqual(p.grad?.toArray(), [0.5, -1])
        XCTAssertNil(DataParallel.launchEnvironment(["OMPI_COMM_WORLD_SIZE": "2"]))
        XCTAssertEqual(DataParallel.launchEnvironment(["OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "1"])?.rank, 1)
    }

    // MARK: - mpirun

    var ldm: URL {
        for b in Bundle.allBundles where b.bundlePath.hasSuffix(".xctest") { return b.bundleURL.deletingLastPathComponent().appendingPathComponent("ldm") }
        return Bundle.main.bundleURL.appendingPathComponent("ldm")
    }

    /// mpirun on PATH and libmpi loadable, else a skip that says what is missing.
    func requireMPI() throws -> URL {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        guard let mpirun = path.split(separator: ":").map({ URL(fileURLWithPath: String($0)).appendingPathComponent("mpirun") })
            .first(where: { FileManager.default.isExecutableFile(atPath: $0.path) }) else {
            print("DataParallelTests: skipped, mpirun is not on PATH (Debian: apt-get install openmpi-bin libopenmpi-dev)")
            throw XCTSkip("mpirun is not on PATH (Debian: apt-get install openmpi-bin libopenmpi-dev)")
        }
        guard FileManager.default.isExecutableFile(atPath: ldm.path) else {
            XCTFail("the ldm executable is not built at \(ldm.path)")
            throw XCTSkip("no ldm executable")
        }
        return mpirun
    }

    /// Runs `ldm args` directly (ranks nil) or under `mpirun -np ranks`; returns (status, stdout + stderr).
    @discardableResult
    func run(_ args: [String], ranks: Int? = nil, mpirun: URL? = nil) throws -> (Int32, String) {
        let p = Process()
        if let ranks, let mpirun {
            p.executableURL = mpirun
            // CI runs as root; one small machine may have fewer cores than ranks.
            p.arguments = ["--allow-run-as-root", "--oversubscribe", "-np", String(ranks), ldm.path] + args
        } else {
            p.executableURL = ldm
            p.arguments = args
        }
        var env = ProcessInfo.processInfo.environment
        env["OMP_NUM_THREADS"] = "1"   // the ranks share this machine's cores
        // Containers often forbid the cross-process memory copy (CMA) of Open MPI's shared-memory transport.
        env["OMPI_MCA_btl_vader_single_copy_mechanism"] = "none"
        p.environment = env
        let out = Pipe()
        p.standardOutput = out; p.standardError = out
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: data, as: UTF8.self))
    }

    /// Eight 16x16 PNGs in class folders a/, b/ (two batches of 4 per epoch).
    func writeImages(_ dir: URL) throws {
        for (k, cls) in ["a", "b"].enumerated() {
            let sub = dir.appendingPathComponent(cls)
            try FileManager.default.createDirectory(at: sub, withIntermediateDirectories: true)
            for i in 0..<4 {
                var img = try RGBImage(width: 16, height: 16, fill: (UInt8(40 + 150 * k), UInt8(i * 60), UInt8(30 + 20 * i)))
                for x in 0..<16 { img.pixels[3 * (16 * i + x) + 1] = UInt8(x * 15) }
                try img.writePNG(to: sub.appendingPathComponent("\(i).png").path)
            }
        }
    }

    func losses(_ run: URL, _ key: String) throws -> [Float] {
        let text = try String(contentsOf: run.appendingPathComponent("loss.jsonl"), encoding: .utf8)
        return try text.split(separator: "\n").map { line in
            let o = try JSONSerialization.jsonObject(with: Data(line.utf8)) as! [String: Any]
            let v = key.split(separator: ".").reduce(o as Any) { ($0 as? [String: Any])?[String($1)] as Any }
            return try XCTUnwrap((v as? NSNumber)?.floatValue, "\(key) in \(line)")
        }
    }

    /// Every tensor of two checkpoints agrees to the tolerance (generator state exactly), as does the metadata.
    func assertSameCheckpoint(_ a: URL, _ b: URL, file: StaticString = #filePath, line: UInt = #line) throws {
        let fa = try SafeTensors(url: a), fb = try SafeTensors(url: b)
        XCTAssertEqual(fa.metadata, fb.metadata, file: file, line: line)
        XCTAssertEqual(Set(fa.records.map(\.name)), Set(fb.records.map(\.name)), file: file, line: line)
        var worst: Float = 0, worstName = ""
        for r in fa.records {
            guard let rb = fb[r.name] else { continue }
            // Attention key biases have an exactly zero gradient (softmax is invariant to adding one constant to all
            // of a query's scores): what backward leaves there is round-off, which AdamW normalises to lr-sized steps,
            // so they follow round-off, not the data, and differ with the summation order. Not compared.
            if r.name.hasSuffix("to_k.bias") { continue }
            if r.dtype == .U8 {
                XCTAssertEqual(try r.rawData(), try rb.rawData(), r.name, file: file, line: line)
            } else {
                let err = assertClose(try rb.tensor().float32().toArray(), try r.tensor().float32().toArray(),
                                      tol: dataParallelTolerance, r.name, file: file, line: line)
                if err > worst { worst = err; worstName = r.name }
            }
        }
        print("DataParallelTests: \(a.lastPathComponent) N=1 vs \(b.deletingLastPathComponent().deletingLastPathComponent().lastPathComponent), \(fa.records.count) tensors, worst rel err \(worst) (\(worstName))")
    }

    func testLDMTrainingMatchesOneProcessAndResumesWithOtherRankCount() throws {
        let mpirun = try requireMPI()
        let work = try tempDirectory("ddp-ldm")
        defer { try? FileManager.default.removeItem(at: work) }
        let data = work.appendingPathComponent("data")
        try writeImages(data)
        // Random draws of every kind: KL posterior samples, timesteps, noise, class dropout; scale_by_std over the
        // global batch; gradient accumulation; EMA; clipping.
        let base: [String: Any] = [
            "base_learning_rate": 2e-3, "scale_lr": false, "batch_size": 4, "max_steps": 6, "ckpt_every": 3,
            "data_dir": data.path, "image_size": 16, "seed": 21, "conditioning": "class", "cond_drop_prob": 0.3,
            "scale_by_std": true, "ema_decay": 0.9, "first_stage": tinyKLFirstStage.path, "accumulate_grad_batches": 2,
            "max_grad_norm": 1.0, "unet_config": tinyClassUNetConfigDictionary,
        ]
        let six = try writeTrainConfig(base, [:], besides: data), three = try writeTrainConfig(base, ["max_steps": 3], besides: data)
        let one = work.appendingPathComponent("one"), two = work.appendingPathComponent("two")
        let (s1, o1) = try run(["train", "ldm", "--config", six.path, "--run-dir", one.path])
        XCTAssertEqual(s1, 0, o1)
        // Steps 1-3 on two ranks, then 4-6 resumed in one process.
        let (s2, o2) = try run(["train", "ldm", "--config", three.path, "--run-dir", two.path], ranks: 2, mpirun: mpirun)
        XCTAssertEqual(s2, 0, o2)
        XCTAssertTrue(o2.contains("2 ranks (MPI) x 2 examples of each batch of 4"), o2)
        XCTAssertTrue(o2.contains("all-reduce of"), o2)
        try assertSameCheckpoint(one.appendingPathComponent("checkpoints/step-00000003.safetensors"),
                                 two.appendingPathComponent("checkpoints/step-00000003.safetensors"))
        // Four ranks (one example each) for the same three steps.
        let four = work.appendingPathComponent("four")
        let (s4, o4) = try run(["train", "ldm", "--config", three.path, "--run-dir", four.path], ranks: 4, mpirun: mpirun)
        XCTAssertEqual(s4, 0, o4)
        try assertSameCheckpoint(one.appendingPathComponent("checkpoints/step-00000003.safetensors"),
                                 four.appendingPathComponent("checkpoints/step-00000003.safetensors"))
        for key in ["loss", "grad_norm"] {
            assertClose(try losses(four, key), Array(try losses(one, key).prefix(3)), tol: curveTolerance, "4-rank \(key) curve")
        }
        let (s3, o3) = try run(["train", "ldm", "--config", six.path, "--resume", two.path])
        XCTAssertEqual(s3, 0, o3)
        try assertSameCheckpoint(one.appendingPathComponent("checkpoints/step-00000006.safetensors"),
                                 two.appendingPathComponent("checkpoints/step-00000006.safetensors"))
        for key in ["loss", "grad_norm"] {
            let a = try losses(one, key), b = try losses(two, key)
            XCTAssertEqual(a.count, 6)
            assertClose(b, a, tol: curveTolerance, "\(key) curve")
            print("DataParallelTests: \(key) N=1 \(a)\n                   N=2 then 1 \(b)")
        }
        // Only rank 0 wrote: one line per step, no stray temporary files.
        let files = try FileManager.default.contentsOfDirectory(atPath: two.appendingPathComponent("checkpoints").path)
        XCTAssertEqual(files.sorted(), ["step-00000003.safetensors", "step-00000006.safetensors"])
    }

    func testAutoencoderTrainingMatchesOneProcess() throws {
        let mpirun = try requireMPI()
        let work = try tempDirectory("ddp-ae")
        defer { try? FileManager.default.removeItem(at: work) }
        let data = work.appendingPathComponent("data")
        try writeImages(data)
        // The discriminator starts after the run: this is the autoencoder alone (with the discriminator and its
        // SyncBatchNorm: DataParallelOverlapTests).
        let config = try writeTrainConfig([
            "base_learning_rate": 1e-3, "scale_lr": false, "batch_size": 4, "max_steps": 4, "ckpt_every": 2,
            "data_dir": data.path, "image_size": 16, "seed": 5, "random_flip": true, "max_grad_norm": 1.0,
            "kl_weight": 1e-3, "disc_start": 100, "disc_ndf": 8, "disc_num_layers": 2,
            "model_config": ["_class_name": "AutoencoderKL", "block_out_channels": [8, 8], "layers_per_block": 1,
                             "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
                             "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"], "latent_channels": 2,
                             "norm_num_groups": 4, "sample_size": 16] as [String: Any],
        ], [:], besides: data)
        let one = work.appendingPathComponent("one"), two = work.appendingPathComponent("two")
        let (s1, o1) = try run(["train", "autoencoder", "--config", config.path, "--run-dir", one.path])
        XCTAssertEqual(s1, 0, o1)
        let (s2, o2) = try run(["train", "autoencoder", "--config", config.path, "--run-dir", two.path], ranks: 2, mpirun: mpirun)
        XCTAssertEqual(s2, 0, o2)
        for step in ["00000002", "00000004"] {
            try assertSameCheckpoint(one.appendingPathComponent("checkpoints/step-\(step).safetensors"),
                                     two.appendingPathComponent("checkpoints/step-\(step).safetensors"))
        }
        for key in ["losses.total_loss", "losses.rec_loss", "losses.kl_loss", "losses.grad_norm"] {
            assertClose(try losses(two, key), try losses(one, key), tol: curveTolerance, key)
        }
        // The exported vae/ comes from rank 0 only, with the same weights.
        let va = try SafeTensors(url: one.appendingPathComponent("vae/diffusion_pytorch_model.safetensors"))
        let vb = try SafeTensors(url: two.appendingPathComponent("vae/diffusion_pytorch_model.safetensors"))
        for r in va.records {
            assertClose(try XCTUnwrap(vb[r.name]).tensor().float32().toArray(), try r.tensor().float32().toArray(),
                        tol: dataParallelTolerance, "vae \(r.name)")
        }
    }

    /// Starts `ldm ARGS` on 2 ranks, kills rank 1 (SIGKILL, as a crash would) once `runDir`'s loss log has 3 lines (past
    /// the first checkpoint), and checks that the job ends non-zero with mpirun's report and rank 0's line.
    func killRankOneDuring(_ mpirun: URL, _ args: [String], runDir: URL) throws {
        let p = Process()
        p.executableURL = mpirun
        p.arguments = ["--allow-run-as-root", "--oversubscribe", "-np", "2", ldm.path] + args
        var env = ProcessInfo.processInfo.environment
        env["OMP_NUM_THREADS"] = "1"
        env["OMPI_MCA_btl_vader_single_copy_mechanism"] = "none"
        p.environment = env
        let out = Pipe()
        p.standardOutput = out
        p.standardError = out
        try p.run()
        let log = runDir.appendingPathComponent("loss.jsonl")
        let deadline = Date().addingTimeInterval(120)
        while Date() < deadline, ((try? String(contentsOf: log, encoding: .utf8))?.split(separator: "\n").count ?? 0) < 3 {
            usleep(50_000)
        }
        let victims = rankProcesses(of: p.processIdentifier, rank: 1)
        XCTAssertEqual(victims.count, 1, "rank 1's process")
        for v in victims { kill(v, SIGKILL) }
        let output = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        XCTAssertNotEqual(p.terminationStatus, 0, output)
        XCTAssertTrue(output.contains("signal 9"), output)                 // mpirun's own report
        XCTAssertTrue(output.contains("terminated by mpirun"), output)     // rank 0's line
    }


    /// The process ids of mpirun's children that run rank `rank` (their environment has OMPI_COMM_WORLD_RANK).
    func rankProcesses(of parent: Int32, rank: Int) -> [Int32] {
        let pids = ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).compactMap { Int32($0) }
        return pids.filter { pid in
            guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
                  let close = stat.lastIndex(of: ")") else { return false }
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            guard fields.count > 2, Int32(fields[1]) == parent,
                  let env = FileManager.default.contents(atPath: "/proc/\(pid)/environ") else { return false }
            return env.split(separator: 0).contains { String(decoding: $0, as: UTF8.self) == "OMPI_COMM_WORLD_RANK=\(rank)" }
        }
    }

    func testAKilledRankEndsTheJobAndTheRunResumes() throws {
        let mpirun = try requireMPI()
        let work = try tempDirectory("ddp-kill")
        defer { try? FileManager.default.removeItem(at: work) }
        let data = work.appendingPathComponent("data")
        try writeImages(data)
        let cfg = try writeTrainConfig(["base_learning_rate": 1e-3, "batch_size": 4, "max_steps": 400, "ckpt_every": 2,
                                        "data_dir": data.path, "image_size": 16, "conditioning": "class", "seed": 3,
                                        "first_stage": tinyKLFirstStage.path, "unet_config": tinyClassUNetConfigDictionary],
                                       [:], besides: data)
        let runDir = work.appendingPathComponent("run")
        try killRankOneDuring(mpirun, ["train", "ldm", "--config", cfg.path, "--run-dir", runDir.path], runDir: runDir)
        let saved = try XCTUnwrap(Trainer.latestCheckpoint(in: runDir))
        let step = try XCTUnwrap(Int(try XCTUnwrap(SafeTensors(url: saved).metadata?["step"])))
        XCTAssertLessThan(step, 400)
        // The run continues in one process from the last checkpoint, with nothing partial left behind.
        let short = try writeTrainConfig(["base_learning_rate": 1e-3, "batch_size": 4, "max_steps": step + 2, "ckpt_every": 2,
                                          "data_dir": data.path, "image_size": 16, "conditioning": "class", "seed": 3,
                                          "first_stage": tinyKLFirstStage.path, "unet_config": tinyClassUNetConfigDictionary],
                                         [:], besides: data)
        let (status, resumed) = try run(["train", "ldm", "--config", short.path, "--resume", runDir.path])
        XCTAssertEqual(status, 0, resumed)
        XCTAssertTrue(resumed.contains("resumed \(runDir.path) at step \(step)"), resumed)
        XCTAssertEqual(try losses(runDir, "loss").count, step + 2)
        let files = try FileManager.default.contentsOfDirectory(atPath: runDir.appendingPathComponent("checkpoints").path)
        XCTAssertFalse(files.contains { $0.contains(".tmp-") }, "\(files)")
    }

    func testAFailingRankEndsTheJobWithAMessage() throws {
        let mpirun = try requireMPI()
        let work = try tempDirectory("ddp-fail")
        defer { try? FileManager.default.removeItem(at: work) }
        let data = work.appendingPathComponent("data")
        try writeImages(data)
        // batch_size 3 cannot be split over 2 ranks: every rank fails before the first step.
        let cfg = try writeTrainConfig(["base_learning_rate": 1e-3, "batch_size": 3, "max_steps": 2, "ckpt_every": 1,
                                        "data_dir": data.path, "image_size": 16, "conditioning": "class",
                                        "first_stage": tinyKLFirstStage.path, "unet_config": tinyClassUNetConfigDictionary],
                                       [:], besides: data)
        let run1 = work.appendingPathComponent("run")
        let (status, out) = try run(["train", "ldm", "--config", cfg.path, "--run-dir", run1.path], ranks: 2, mpirun: mpirun)
        XCTAssertNotEqual(status, 0, out)
        XCTAssertTrue(out.contains("failed: batch_size 3 is not divisible by the 2 ranks"), out)
        XCTAssertTrue(out.contains("aborting all ranks"), out)
        XCTAssertNil(Trainer.latestCheckpoint(in: run1))
    }
}
