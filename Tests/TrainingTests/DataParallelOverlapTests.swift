import Checkpoints
import Foundation
import NeuralNetwork
import TensorCore
import XCTest
@testable import Training

// Data-parallel training, part 2 (Training/GradientBuckets.swift, Training/SyncBatchNorm.swift):
//  - the gradient all-reduce overlapped with backward (buckets started from TensorCore's gradient-ready hook) gives
//    bit-identical weights to the all-reduce after backward, for `ldm train ldm` and for `ldm train autoencoder`
//    with the discriminator on (whose SyncBatchNorm all-reduces during backward, beside the buckets in flight);
//  - SyncBatchNorm: the discriminator on two ranks with half batches gives the one-process full-batch output,
//    running statistics and gradients, and `ldm train autoencoder` past disc_start no longer depends on N.
// The mpirun tests skip, saying why, where Open MPI is not installed (DataParallelTests.requireMPI).

extension DataParallelTests {
    // MARK: - Overlap

    /// Every tensor and the metadata of two checkpoints are bit for bit the same.
    func assertIdenticalCheckpoint(_ a: URL, _ b: URL, file: StaticString = #filePath, line: UInt = #line) throws {
        let fa = try SafeTensors(url: a), fb = try SafeTensors(url: b)
        XCTAssertEqual(fa.metadata, fb.metadata, file: file, line: line)
        XCTAssertEqual(fa.records.map(\.name).sorted(), fb.records.map(\.name).sorted(), file: file, line: line)
        var differing: [String] = []
        for r in fa.records where try r.rawData() != (try fb[r.name]?.rawData()) { differing.append(r.name) }
        XCTAssertEqual(differing, [], "tensors that differ between \(a.path) and \(b.path)", file: file, line: line)
    }

    /// The number of buckets started during backward, from the "... in K buckets (M started during backward)" line.
    func bucketsStartedDuringBackward(_ output: String) -> (buckets: Int, started: Int)? {
        guard let r = output.range(of: #"in (\d+) buckets \((\d+) started during backward\)"#, options: .regularExpression) else { return nil }
        let numbers = output[r].split(whereSeparator: { !$0.isNumber }).compactMap { Int($0) }
        return numbers.count == 2 ? (numbers[0], numbers[1]) : nil
    }

    func testOverlappedAllReduceGivesTheWeightsOfTheAllReduceAfterBackward() throws {
        let mpirun = try requireMPI()
        let work = try tempDirectory("ddp-overlap")
        defer { try? FileManager.default.removeItem(at: work) }
        let data = work.appendingPathComponent("data")
        try writeImages(data)
        let cfg = try writeTrainConfig([
            "base_learning_rate": 2e-3, "scale_lr": false, "batch_size": 4, "max_steps": 4, "ckpt_every": 4,
            "data_dir": data.path, "image_size": 16, "seed": 8, "conditioning": "class", "cond_drop_prob": 0.3,
            "ema_decay": 0.9, "first_stage": tinyKLFirstStage.path, "accumulate_grad_batches": 2, "max_grad_norm": 1.0,
            "unet_config": tinyClassUNetConfigDictionary,
        ], [:], besides: data)
        // 16 KiB buckets: the tiny UNet's gradients (~45 K values) fill several, so some start during backward.
        // np 2 (the case the issue asks for), and np 4, where the sum of four values depends on the order MPI adds
        // them in: both paths make the same MPI_Iallreduce calls on the same buffers, so they agree there too.
        var outputs: [String] = []
        for mode in ["overlap", "after", "overlap-np4", "after-np4"] {
            let (status, out) = try run(["train", "ldm", "--config", cfg.path, "--run-dir", work.appendingPathComponent(mode).path,
                                         "--bucket-cap-mb", "0.015625"] + (mode.hasPrefix("after") ? ["--no-overlap"] : []),
                                        ranks: mode.hasSuffix("np4") ? 4 : 2, mpirun: mpirun)
            XCTAssertEqual(status, 0, out)
            outputs.append(out)
            for line in out.split(separator: "\n") where line.contains("steps/s") { print("DataParallelTests: ldm, \(mode): \(line)") }
        }
        let overlap = try XCTUnwrap(bucketsStartedDuringBackward(outputs[0]), outputs[0])
        XCTAssertGreaterThan(overlap.buckets, 2, outputs[0])
        XCTAssertGreaterThan(overlap.started, 0, "no bucket started during backward: \(outputs[0])")
        XCTAssertTrue(outputs[1].contains("buckets (after backward)"), outputs[1])
        try assertIdenticalCheckpoint(work.appendingPathComponent("overlap/checkpoints/step-00000004.safetensors"),
                                      work.appendingPathComponent("after/checkpoints/step-00000004.safetensors"))
        XCTAssertEqual(try losses(work.appendingPathComponent("overlap"), "loss"), try losses(work.appendingPathComponent("after"), "loss"))
        try assertIdenticalCheckpoint(work.appendingPathComponent("overlap-np4/checkpoints/step-00000004.safetensors"),
                                      work.appendingPathComponent("after-np4/checkpoints/step-00000004.safetensors"))
    }

    func testBucketCapIsValidated() throws {
        guard FileManager.default.isExecutableFile(atPath: ldm.path) else { return XCTFail("the ldm executable is not built at \(ldm.path)") }
        for bad in ["0", "-1", "nan", "2000000"] {
            let (status, out) = try run(["train", "ldm", "--config", "/nonexistent.json", "--bucket-cap-mb=\(bad)"])
            XCTAssertNotEqual(status, 0, out)
            XCTAssertTrue(out.contains("--bucket-cap-mb must be a positive number of MiB"), out)
        }
    }

    func testAutoencoderWithTheDiscriminatorOnIsIndependentOfTheRanksAndOfTheOverlap() throws {
        let mpirun = try requireMPI()
        let work = try tempDirectory("ddp-syncbn")
        defer { try? FileManager.default.removeItem(at: work) }
        let data = work.appendingPathComponent("data")
        try writeImages(data)
        // disc_start 0: from the first step the discriminator (two SyncBatchNorm layers) trains and, frozen, drives the
        // generator through g_loss and the adaptive weight.
        let config = try writeTrainConfig([
            "base_learning_rate": 1e-3, "scale_lr": false, "batch_size": 4, "max_steps": 2, "ckpt_every": 2,
            "data_dir": data.path, "image_size": 16, "seed": 6, "random_flip": true, "max_grad_norm": 1.0,
            "kl_weight": 1e-3, "disc_start": 0, "disc_ndf": 8, "disc_num_layers": 2,
            "model_config": ["_class_name": "AutoencoderKL", "block_out_channels": [8, 8], "layers_per_block": 1,
                             "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
                             "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"], "latent_channels": 2,
                             "norm_num_groups": 4, "sample_size": 16] as [String: Any],
        ], [:], besides: data)
        let one = work.appendingPathComponent("one")
        let (s1, o1) = try run(["train", "autoencoder", "--config", config.path, "--run-dir", one.path])
        XCTAssertEqual(s1, 0, o1)
        for mode in ["overlap", "after"] {
            let (status, out) = try run(["train", "autoencoder", "--config", config.path, "--run-dir", work.appendingPathComponent(mode).path,
                                         "--bucket-cap-mb", "0.015625"] + (mode == "after" ? ["--no-overlap"] : []),
                                        ranks: 2, mpirun: mpirun)
            XCTAssertEqual(status, 0, out)
        }
        let step = "checkpoints/step-00000002.safetensors"
        try assertIdenticalCheckpoint(work.appendingPathComponent("overlap").appendingPathComponent(step),
                                      work.appendingPathComponent("after").appendingPathComponent(step))
        // Without SyncBatchNorm the two ranks' discriminators normalise 2 examples each, not 4: the discriminator
        // logits, hence disc_loss and g_loss, differ from one process at once, by far more than round-off.
        try assertSameCheckpoint(one.appendingPathComponent(step), work.appendingPathComponent("overlap").appendingPathComponent(step))
        for key in ["losses.total_loss", "losses.disc_loss", "losses.g_loss", "losses.logits_real", "losses.logits_fake"] {
            assertClose(try losses(work.appendingPathComponent("overlap"), key), try losses(one, key), tol: curveTolerance, key)
        }
    }

    // MARK: - SyncBatchNorm

    /// The discriminator and the batch of the SyncBatchNorm test (the same in every process).
    func syncBatchNormProblem() -> (NLayerDiscriminator, Tensor) {
        let d = NLayerDiscriminator(inputChannels: 3, ndf: 8, nLayers: 2, generator: TorchGenerator(seed: 11))
        // Shifted and scaled so that the statistics are far from (0, 1) and differ between the two halves.
        let z = Tensor.randn([4, 3, 16, 16], generator: TorchGenerator(seed: 12)).toArray(), per = z.count / 4
        return (d, Tensor(z.enumerated().map { i, v in v * 1.5 + Float(i / per) * 0.75 - 0.5 }, shape: [4, 3, 16, 16]))
    }

    /// A loss with a per-example mean (as the hinge and g_loss terms), nonlinear in the logits.
    func syncBatchNormLoss(_ logits: Tensor) -> Tensor { (logits * logits).mean() + logits.mean() * 0.5 }

    /// What the test compares: logits, input gradient, parameter gradients and BatchNorm buffers.
    func syncBatchNormResults(_ d: NLayerDiscriminator, logits: Tensor, input: Tensor) -> [String: [Float]] {
        var r = ["logits": logits.float32().contiguous().toArray(), "input.grad": input.grad?.toArray() ?? []]
        for (name, p) in d.trainableParameters { r[name + ".grad"] = p.grad?.float32().contiguous().toArray() ?? [] }
        for (name, t) in d.namedParameters where name.contains("running") { r[name] = t.toArray() }
        return r
    }

    /// One rank of testSyncBatchNormMatchesTheFullBatch, run by it under mpirun (LDM_SYNCBN_OUT names the folder for
    /// the results); alone it has nothing to do.
    func testSyncBatchNormRankWorker() throws {
        guard let out = ProcessInfo.processInfo.environment["LDM_SYNCBN_OUT"] else {
            throw XCTSkip("a rank of testSyncBatchNormMatchesTheFullBatch; it runs under the mpirun that test starts")
        }
        let comm = try DataParallel.communicator()
        defer { comm.finalize() }
        XCTAssertEqual(comm.size, 2)
        let (d, x) = syncBatchNormProblem()
        d.synchronizedBatchNorm = comm
        let shard = try BatchShard(globalBatch: 4, rank: comm.rank, count: comm.size)
        let input = shard.rows(x).requiringGrad()
        let logits = d(input)
        // DDP: each rank's loss is its shard's mean; the parameter gradients are averaged over the ranks.
        try GradientAverager(communicator: comm).backward(syncBatchNormLoss(logits), parameters: d.trainableParameters.map(\.1))
        let data = try JSONEncoder().encode(syncBatchNormResults(d, logits: logits, input: input))
        try data.write(to: URL(fileURLWithPath: out).appendingPathComponent("rank-\(comm.rank).json"))
    }

    func testSyncBatchNormMatchesTheFullBatch() throws {
        let mpirun = try requireMPI()
        let work = try tempDirectory("syncbn")
        defer { try? FileManager.default.removeItem(at: work) }
        // The full batch in this process, with the plain BatchNorm2d.
        let (d, x) = syncBatchNormProblem()
        let input = x.requiringGrad()
        let logits = d(input)
        syncBatchNormLoss(logits).backward()
        let full = syncBatchNormResults(d, logits: logits, input: input)

        // Half the batch on each of two ranks: this test bundle's rank worker under mpirun.
        let p = Process()
        p.executableURL = mpirun
        p.arguments = ["--allow-run-as-root", "--oversubscribe", "-np", "2", "/proc/self/exe".resolvingSymlinks,
                       "TrainingTests.DataParallelTests/testSyncBatchNormRankWorker"]
        var env = ProcessInfo.processInfo.environment
        env["OMP_NUM_THREADS"] = "1"
        env["OMPI_MCA_btl_vader_single_copy_mechanism"] = "none"
        env["LDM_SYNCBN_OUT"] = work.path
        p.environment = env
        let pipe = Pipe()
        p.standardOutput = pipe; p.standardError = pipe
        try p.run()
        let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0, output)
        XCTAssertEqual(output.components(separatedBy: "testSyncBatchNormRankWorker' passed").count, 3, "both ranks ran the worker: \(output)")
        let ranks = try (0..<2).map { try JSONDecoder().decode([String: [Float]].self, from: Data(contentsOf: work.appendingPathComponent("rank-\($0).json"))) }

        // Each rank's logits and input gradient are its rows of the full batch's. The input gradient of a rank is of
        // the sum of the ranks' losses (each a shard mean), i.e. N times the full-batch mean's.
        for key in ["logits", "input.grad"] {
            let scale: Float = key == "input.grad" ? 0.5 : 1
            let joined = ranks.flatMap { ($0[key] ?? []).map { $0 * scale } }
            let err = assertClose(joined, full[key]!, tol: 1e-5, "\(key), ranks joined vs the full batch")
            print("DataParallelTests: SyncBatchNorm np 2 vs the full batch: \(key) rel err \(err)")
        }
        // Parameter gradients (averaged) and running statistics are the full batch's on both ranks.
        for (name, expected) in full where name != "logits" && name != "input.grad" {
            XCTAssertFalse(expected.isEmpty, name)
            for (r, results) in ranks.enumerated() {
                let err = assertClose(results[name] ?? [], expected, tol: 1e-5, "rank \(r) \(name)")
                if r == 0 { print("DataParallelTests: SyncBatchNorm np 2 vs the full batch: \(name) rel err \(err)") }
            }
        }
        // Without synchronisation the two halves' statistics differ: the check above would fail by far.
        let (plain, _) = syncBatchNormProblem()
        let half = GradMode.noGrad { plain(x.narrow(0, 0, 2).contiguous()) }
        let fullRows = Array(full["logits"]!.prefix(half.count))
        let apart = zip(half.toArray(), fullRows).map { abs($0 - $1) }.max() ?? 0
        XCTAssertGreaterThan(apart / (fullRows.map(abs).max() ?? 1), 1e-2, "the halves should normalise differently alone")
    }
}

private extension String {
    /// The path with symbolic links resolved (for /proc/self/exe: this test bundle's executable).
    var resolvingSymlinks: String { (try? FileManager.default.destinationOfSymbolicLink(atPath: self)) ?? self }
}
