import Checkpoints
import Diffusion
import Foundation
import Imaging
import TensorCore
import UNetModels
import XCTest
@testable import Training

// The training loop: bit-identical resume, checkpoint contents, loss log, datasets.

final class TrainerTests: XCTestCase {
    func makeTrainer(runDir: URL, accumulation: Int = 1) throws -> Trainer {
        let model = try UNet2DConditionModel.random(config: UNetConfig.decode(Data(tinyClassUNetConfig.utf8)), seed: 11)
        let latents = Tensor.randn([5, 4, 8, 8], generator: TorchGenerator(seed: 5)) * 2
        let dataset = try TensorDataset(images: latents, labels: [0, 1, 2, 0, 1], classCount: 3)
        let loss = try DiffusionLoss(schedule: NoiseSchedule(schedule: .scaledLinear, betaStart: 0.00085, betaEnd: 0.012),
                                     parameterization: .v, condDropProb: 0.3, nullClass: 2)
        var options = TrainerOptions(learningRate: 1e-3, batchSize: 2, maxSteps: 6, checkpointEvery: 3, seed: 42)
        options.scaleByStd = true
        options.emaDecay = 0.99
        options.gradientAccumulationSteps = accumulation
        options.lrSchedule = .cosine(warmup: 2, total: 6)
        return try Trainer(model: model, loss: loss, dataset: dataset, options: options, runDir: runDir)
    }

    func testResumedRunIsBitIdentical() throws {
        let a = try tempDirectory("straight"), b = try tempDirectory("resumed")
        defer { try? FileManager.default.removeItem(at: a); try? FileManager.default.removeItem(at: b) }
        let straight = try makeTrainer(runDir: a, accumulation: 2)
        try straight.train()
        XCTAssertEqual(straight.step, 6)

        let first = try makeTrainer(runDir: b, accumulation: 2)
        try first.train(steps: 3)
        try first.trainStep()   // a step after the checkpoint, lost by the "crash": resume must discard its log line
        let resumed = try makeTrainer(runDir: b, accumulation: 2)
        try resumed.resume()
        XCTAssertEqual(resumed.step, 3)
        XCTAssertEqual(resumed.scaleFactor, first.scaleFactor)
        try resumed.train()

        var compared = 0
        for ((n, p), (_, q)) in zip(straight.model.namedParameters, resumed.model.namedParameters) {
            XCTAssertEqual(p.toArray().map(\.bitPattern), q.toArray().map(\.bitPattern), "weights \(n)")
            compared += 1
        }
        for n in try XCTUnwrap(straight.ema).names {
            XCTAssertEqual(straight.ema?.shadow[n]?.toArray().map(\.bitPattern), resumed.ema?.shadow[n]?.toArray().map(\.bitPattern), "ema \(n)")
            XCTAssertEqual(straight.optimizer.expAvgSq[n]?.toArray().map(\.bitPattern), resumed.optimizer.expAvgSq[n]?.toArray().map(\.bitPattern), "v \(n)")
        }
        XCTAssertEqual(straight.generator.state, resumed.generator.state)
        XCTAssertGreaterThan(compared, 20)
        // Same loss log (the step-4 line of the interrupted run was replaced).
        let logA = try String(contentsOf: straight.logURL, encoding: .utf8), logB = try String(contentsOf: resumed.logURL, encoding: .utf8)
        XCTAssertEqual(logA, logB)
        XCTAssertEqual(logA.split(separator: "\n").count, 6)
        // Training moved the weights.
        let initial = try makeTrainer(runDir: a)
        XCTAssertNotEqual(initial.model.convIn.weight.toArray(), straight.model.convIn.weight.toArray())
        print("Resume check: \(compared) parameters bit-identical after 6 straight vs 3 + resume + 3 steps")
    }

    func testCheckpointContentsAndExport() throws {
        let dir = try tempDirectory("ckpt")
        defer { try? FileManager.default.removeItem(at: dir) }
        let t = try makeTrainer(runDir: dir)
        try t.train(steps: 3)
        let url = try XCTUnwrap(Trainer.latestCheckpoint(in: dir))
        XCTAssertEqual(url.lastPathComponent, "step-00000003.safetensors")
        let file = try SafeTensors(url: url)
        XCTAssertEqual(file.metadata?["step"], "3")
        XCTAssertEqual(file.metadata?["optimizer_step"], "3")
        XCTAssertEqual(file.metadata?["ema_num_updates"], "3")
        XCTAssertEqual(file["generator_state"]?.dtype, .U8)
        XCTAssertEqual(file["generator_state"]?.shape, [TorchGenerator.stateByteCount])
        let names = Set(file.records.map(\.name))
        for (n, _) in t.model.namedParameters {
            XCTAssertTrue(names.isSuperset(of: ["model.\(n)", "ema.\(n)", "optimizer.exp_avg.\(n)", "optimizer.exp_avg_sq.\(n)"]), n)
        }
        try t.train()
        // Final export: EMA weights in the diffusers layout, loadable by UNetModels.
        let unetDir = dir.appendingPathComponent("unet")
        let back = try UNet2DConditionModel(pretrainedFolder: unetDir)
        let ema = try XCTUnwrap(t.ema)
        XCTAssertEqual(back.convIn.weight.toArray(), ema.shadow["conv_in.weight"]?.toArray())
        // Resuming a run without checkpoints is refused.
        XCTAssertThrowsError(try makeTrainer(runDir: try tempDirectory("empty")).resume())
    }

    func testSampleCallbackWritesGrid() throws {
        let dir = try tempDirectory("sample")
        defer { try? FileManager.default.removeItem(at: dir) }
        var options = try makeTrainer(runDir: dir).options
        options.sampleEvery = 1
        let model = try UNet2DConditionModel.random(config: UNetConfig.decode(Data(tinyClassUNetConfig.utf8)), seed: 1)
        let t = try Trainer(model: model, loss: DiffusionLoss(schedule: NoiseSchedule(schedule: .linear)),
                            dataset: TensorDataset(images: Tensor.randn([2, 4, 8, 8], generator: TorchGenerator(seed: 2)), labels: [0, 1]), options: options, runDir: dir)
        var calls = 0
        t.sampleCallback = { _, step in calls += 1; return try RGBImage(width: 4, height: 4, fill: (UInt8(step), 0, 0)) }
        try t.trainStep()
        XCTAssertEqual(calls, 1)
        XCTAssertTrue(FileManager.default.fileExists(atPath: dir.appendingPathComponent("samples/step-00000001.png").path))
    }

    func testImageFolderDataset() throws {
        let dir = try tempDirectory("images")
        defer { try? FileManager.default.removeItem(at: dir) }
        for (cls, n) in [("cat", 2), ("dog", 1)] {
            let sub = dir.appendingPathComponent(cls)
            try FileManager.default.createDirectory(at: sub, withIntermediateDirectories: true)
            for i in 0..<n {
                var img = try RGBImage(width: 12, height: 8, fill: (0, 0, 0))
                for y in 0..<8 { for x in 0..<12 { img.pixels[3 * (y * 12 + x)] = UInt8(x * 20) } }
                try img.writePNG(to: sub.appendingPathComponent("\(i).png").path)
            }
        }
        try "a dog".write(to: dir.appendingPathComponent("dog/0.txt"), atomically: true, encoding: .utf8)
        let ds = try ImageFolderDataset(root: dir, size: 4)
        XCTAssertEqual(ds.classNames, ["cat", "dog"])
        XCTAssertEqual(ds.count, 3)
        let ex = try ds.example(at: 2, generator: TorchGenerator(seed: 0))
        XCTAssertEqual(ex.image.shape, [3, 4, 4])
        XCTAssertEqual(ex.classLabel, 1)
        XCTAssertEqual(ex.caption, "a dog")
        XCTAssertTrue(ex.image.toArray().allSatisfy { $0 >= -1 && $0 <= 1 })
        // Same generator seed, same crop and flip.
        XCTAssertEqual(try ds.example(at: 0, generator: TorchGenerator(seed: 9)).image.toArray(),
                       try ds.example(at: 0, generator: TorchGenerator(seed: 9)).image.toArray())
        let sampler = try BatchSampler(dataset: ds, batchSize: 2, seed: 1)
        XCTAssertEqual(try sampler.order(epoch: 0).sorted(), [0, 1, 2])
        XCTAssertEqual(try sampler.batch(epoch: 0, index: 0).images.shape, [2, 3, 4, 4])
        XCTAssertThrowsError(try ImageFolderDataset(root: dir.appendingPathComponent("missing"), size: 4))
        XCTAssertThrowsError(try ImageFolderDataset(root: dir, size: 0))
        XCTAssertThrowsError(try BatchSampler(dataset: ds, batchSize: 4, seed: 0))
    }
}
