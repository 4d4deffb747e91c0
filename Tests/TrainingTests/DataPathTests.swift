import Autoencoders
import Checkpoints
import Foundation
import Imaging
import TensorCore
import XCTest
@testable import Training

// The training data path: the latent cache (cache_latents: moments of the frozen KL first stage, both flips, keyed
// on the data and the first stage, exact resume) and the background batch loader (bit-identical to loading
// synchronously).

final class DataPathTests: XCTestCase {
    /// A class-conditional run on the tiny KL f=4 first stage (16x16 images -> 4x4x4 latents).
    func config(data: URL, run: URL, firstStage: URL = tinyKLFirstStage, _ extra: [String: Any] = [:]) throws -> URL {
        let d: [String: Any] = [
            "base_learning_rate": 1e-3, "scale_lr": false, "batch_size": 2, "max_steps": 6, "ckpt_every": 3,
            "data_dir": data.path, "image_size": 16, "seed": 9, "conditioning": "class", "cond_drop_prob": 0.3,
            "scale_by_std": true, "ema_decay": 0.9, "first_stage": firstStage.path, "run_dir": run.path,
            "cache_latents": true, "random_crop": false, "random_flip": true, "accumulate_grad_batches": 2,
            "unet_config": tinyClassUNetConfigDictionary,
        ]
        return try writeTrainConfig(d, extra, besides: data)
    }

    func trainer(_ data: URL, _ run: URL, _ extra: [String: Any] = [:], firstStage: URL = tinyKLFirstStage,
                 log: @escaping (String) -> Void = { _ in }) throws -> Trainer {
        try LDMTrainConfig.load(config(data: data, run: run, firstStage: firstStage, extra)).makeTrainer(runDir: run, log: log)
    }

    func klModel(_ t: Trainer) throws -> AutoencoderKL {
        guard case .kl(let m) = t.encoder else { throw TrainingError("not a KL first stage") }
        return m
    }

    func assertBitIdentical(_ a: Trainer, _ b: Trainer, file: StaticString = #filePath, line: UInt = #line) throws {
        var compared = 0
        for ((n, p), (_, q)) in zip(a.model.namedParameters, b.model.namedParameters) {
            XCTAssertEqual(p.toArray().map(\.bitPattern), q.toArray().map(\.bitPattern), "weights \(n)", file: file, line: line)
            compared += 1
        }
        for n in try XCTUnwrap(a.ema).names {
            XCTAssertEqual(a.ema?.shadow[n]?.toArray().map(\.bitPattern), b.ema?.shadow[n]?.toArray().map(\.bitPattern), "ema \(n)", file: file, line: line)
        }
        XCTAssertGreaterThan(compared, 20, file: file, line: line)
        XCTAssertEqual(a.generator.state, b.generator.state, file: file, line: line)
        XCTAssertEqual(a.scaleFactor, b.scaleFactor, file: file, line: line)
        XCTAssertEqual(try String(contentsOf: a.logURL, encoding: .utf8), try String(contentsOf: b.logURL, encoding: .utf8), file: file, line: line)
    }

    func testLatentCacheHoldsTheEncoderMomentsOfBothFlips() throws {
        let work = try tempDirectory("cache")
        defer { try? FileManager.default.removeItem(at: work) }
        let data = work.appendingPathComponent("data"), run = work.appendingPathComponent("run")
        try writeTinyImageFolder(data)
        var lines: [String] = []
        let t = try trainer(data, run, log: { lines.append($0) })
        let cache = try XCTUnwrap(t.latentCache)
        XCTAssertEqual(cache.origin, .built(reason: "no cache in \(run.path) yet"))
        XCTAssertTrue(lines.contains { $0.contains("encoding 4 images x 2 flips") }, "\(lines)")
        XCTAssertEqual(cache.kind, .klMoments)
        XCTAssertEqual([cache.count, cache.variants] + cache.entryShape, [4, 2, 8, 4, 4])
        XCTAssertEqual(cache.url, run.appendingPathComponent(LatentCache.fileName))
        // Written atomically: no temp file left beside it.
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: run.path).filter { $0.contains(".tmp") }, [])

        // Every entry is the first stage's moments (mean, logvar) of the centre crop or of its mirror image.
        let kl = try klModel(t), images = try ImageFolderDataset(root: data, size: 16, randomCrop: false, randomFlip: true)
        for i in 0..<4 {
            for v in 0..<2 {
                let x = try images.centeredExample(at: i, flipped: v == 1).image.unsqueezed(0)
                let expected = try kl.encode(x, tiled: .never).parameters.toArray()
                // f32 parity: the cache encoded two images per batch, here one; oneDNN may block them differently.
                assertClose(try cache.entry(i, variant: v).toArray(), expected, tol: 1e-5, "image \(i) flip \(v)")
            }
            XCTAssertNotEqual(try cache.entry(i, variant: 0).toArray(), try cache.entry(i, variant: 1).toArray())
        }

        // The cached data set draws the same flips as the image path: batch for batch, the cached moments are the
        // encoder's moments of the augmented images, and a posterior sample from the cache with the same generator
        // is the encoder's sample (the same noise: the latents have the same distribution, draw for draw).
        let imageSampler = try BatchSampler(dataset: images, batchSize: 2, seed: 9)
        var flips = 0
        for epoch in 0..<3 {
            for b in 0..<2 {
                let cached = try t.sampler.batch(epoch: epoch, index: b), real = try imageSampler.batch(epoch: epoch, index: b)
                XCTAssertEqual(cached.classLabels, real.classLabels)
                XCTAssertEqual(cached.captions, real.captions)
                assertClose(cached.images.toArray(), try kl.encode(real.images, tiled: .never).parameters.toArray(), tol: 1e-5, "batch \(epoch).\(b)")
                let z = try t.encoder.latents(fromCached: cached.images, generator: TorchGenerator(seed: UInt64(10 * epoch + b)))
                let zRef = try t.encoder.encode(real.images, generator: TorchGenerator(seed: UInt64(10 * epoch + b)))
                assertClose(z.toArray(), zRef.toArray(), tol: 1e-5, "posterior sample \(epoch).\(b)")
                XCTAssertNotEqual(z.toArray(), try t.encoder.latents(fromCached: cached.images, generator: TorchGenerator(seed: 99)).toArray())
                let mirrored = try BatchSampler(dataset: images, batchSize: 2, seed: 9).order(epoch: epoch)[(2 * b)..<(2 * b + 2)]
                    .map { ImageFolderDataset.drawsFlip(TorchGenerator(seed: BatchSampler.mix(9, UInt64(epoch), UInt64($0), 1))) }
                flips += mirrored.filter { $0 }.count
            }
        }
        XCTAssertGreaterThan(flips, 0)
        XCTAssertLessThan(flips, 12)

        // Training on the cache follows training on the images: the same scale_by_std factor from the first batch,
        // the same losses (up to the f32 differences of the moments).
        let uncachedRun = work.appendingPathComponent("uncached")
        let u = try trainer(data, uncachedRun, ["cache_latents": false])
        XCTAssertNil(u.latentCache)
        try t.train(steps: 2); try u.train(steps: 2)
        XCTAssertEqual(try XCTUnwrap(t.scaleFactor), try XCTUnwrap(u.scaleFactor), accuracy: 1e-5 * (u.scaleFactor ?? 1))
        let lossesCached = try String(contentsOf: t.logURL, encoding: .utf8).split(separator: "\n")
            .map { try JSONDecoder().decode(TrainingLogEntry.self, from: Data($0.utf8)).loss }
        let lossesImages = try String(contentsOf: u.logURL, encoding: .utf8).split(separator: "\n")
            .map { try JSONDecoder().decode(TrainingLogEntry.self, from: Data($0.utf8)).loss }
        assertClose(lossesCached, lossesImages, tol: 1e-4, "losses")

        // A second run on the same data and first stage opens the file instead of encoding again.
        let again = try trainer(data, run)
        XCTAssertEqual(again.latentCache?.origin, .loaded)
    }

    func testLatentCacheIsRebuiltWhenImagesOrFirstStageChange() throws {
        let work = try tempDirectory("cache-keys")
        defer { try? FileManager.default.removeItem(at: work) }
        let data = work.appendingPathComponent("data"), run = work.appendingPathComponent("run")
        try writeTinyImageFolder(data)
        let first = try XCTUnwrap(try trainer(data, run).latentCache)
        let before = try first.entry(1, variant: 0).toArray(), other = try first.entry(0, variant: 0).toArray()

        // One image edited (same name, same size): the data key changes.
        var img = try ImageIO.loadRGB(path: data.appendingPathComponent("a/1.png").path)
        for i in stride(from: 0, to: img.pixels.count, by: 7) { img.pixels[i] = 255 - img.pixels[i] }
        try img.writePNG(to: data.appendingPathComponent("a/1.png").path, overwrite: true)
        let edited = try XCTUnwrap(try trainer(data, run).latentCache)
        XCTAssertEqual(edited.origin, .built(reason: "the training images changed"))
        XCTAssertNotEqual(try edited.entry(1, variant: 0).toArray(), before)
        XCTAssertEqual(try edited.entry(0, variant: 0).toArray(), other)

        // Without random_flip only one variant is kept: a different cache.
        let unflipped = try XCTUnwrap(try trainer(data, run, ["random_flip": false]).latentCache)
        XCTAssertEqual(unflipped.origin, .built(reason: "the training images changed"))
        XCTAssertEqual(unflipped.variants, 1)
        XCTAssertEqual(try unflipped.entry(0, variant: 0).toArray(), other)

        // The first stage with one weight changed: the first-stage key changes.
        let stage = work.appendingPathComponent("vae")
        try FileManager.default.createDirectory(at: stage, withIntermediateDirectories: true)
        try FileManager.default.copyItem(at: tinyKLFirstStage.appendingPathComponent("config.json"), to: stage.appendingPathComponent("config.json"))
        let kl = try AutoencoderKL.load(folder: tinyKLFirstStage)
        let w = kl.encoder.convIn.weight
        w.assign(w * 1.5)
        try kl.save(to: stage.appendingPathComponent("diffusion_pytorch_model.safetensors"))
        let restaged = try XCTUnwrap(try trainer(data, run, ["random_flip": false], firstStage: stage).latentCache)
        XCTAssertEqual(restaged.origin, .built(reason: "the first stage changed"))
        XCTAssertNotEqual(try restaged.entry(0, variant: 0).toArray(), other)
        XCTAssertEqual(try trainer(data, run, ["random_flip": false], firstStage: stage).latentCache?.origin, .loaded)

        // A damaged file is rebuilt, not trusted.
        try Data("not a cache".utf8).write(to: run.appendingPathComponent(LatentCache.fileName))
        guard case .built(let reason)? = try trainer(data, run).latentCache?.origin else { return XCTFail("damaged cache not rebuilt") }
        XCTAssertTrue(reason.contains("unreadable"), reason)
    }

    func testVQLatentCache() throws {
        let work = try tempDirectory("cache-vq")
        defer { try? FileManager.default.removeItem(at: work) }
        let data = work.appendingPathComponent("data"), run = work.appendingPathComponent("run")
        try writeTinyImageFolder(data)
        let vqFolder = tinyKLFirstStage.deletingLastPathComponent().appendingPathComponent("vq_f4")
        let cfg = try LDMTrainConfig.load(config(data: data, run: run, firstStage: vqFolder, ["random_flip": false, "max_steps": 2]))
        var unet = try XCTUnwrap(cfg.unetConfig)
        unet["in_channels"] = 3; unet["out_channels"] = 3
        var c = cfg
        c.unetConfig = unet
        let t = try c.makeTrainer(runDir: run)
        let cache = try XCTUnwrap(t.latentCache)
        XCTAssertEqual(cache.kind, .vqLatents)
        XCTAssertEqual([cache.count, cache.variants] + cache.entryShape, [4, 1, 3, 4, 4])
        guard case .vq(let vq) = t.encoder else { return XCTFail("not a VQ first stage") }
        let images = try ImageFolderDataset(root: data, size: 16, randomCrop: false, randomFlip: false)
        for i in 0..<4 {
            let x = try images.centeredExample(at: i, flipped: false).image.unsqueezed(0)
            assertClose(try cache.entry(i, variant: 0).toArray(), try vq.encode(x).toArray(), tol: 1e-5, "VQ latents \(i)")
        }
        // VQ latents are deterministic: used as they are, nothing drawn.
        let batch = try t.sampler.batch(epoch: 0, index: 0), g = TorchGenerator(seed: 1)
        XCTAssertEqual(try t.encoder.latents(fromCached: batch.images, generator: g).toArray(), batch.images.toArray())
        XCTAssertEqual(g.state, TorchGenerator(seed: 1).state)
        try t.train()
        XCTAssertEqual(t.step, 2)
    }

    func testCachedRunResumesBitIdenticalWithAndWithoutPrefetch() throws {
        let work = try tempDirectory("cache-resume")
        defer { try? FileManager.default.removeItem(at: work) }
        let data = work.appendingPathComponent("data")
        try writeTinyImageFolder(data)
        let a = work.appendingPathComponent("a"), b = work.appendingPathComponent("b")
        let straight = try trainer(data, a, ["prefetch": false])
        try straight.train()
        XCTAssertEqual(straight.step, 6)
        XCTAssertEqual(straight.loader.prefetchedBatches, 0)

        let first = try trainer(data, b)
        try first.train(steps: 3)
        try first.trainStep()   // after the checkpoint: lost by the "crash"
        XCTAssertGreaterThan(first.loader.prefetchedBatches, 0)
        let resumed = try trainer(data, b)
        XCTAssertEqual(resumed.latentCache?.origin, .loaded)
        try resumed.resume()
        XCTAssertEqual(resumed.step, 3)
        try resumed.train()
        try assertBitIdentical(straight, resumed)
    }

    func testPrefetchGivesBitIdenticalTraining() throws {
        // 20x16 images: a random crop (left offset 0...4) and flip per example, decoded on the loader thread.
        let work = try tempDirectory("prefetch")
        defer { try? FileManager.default.removeItem(at: work) }
        let data = work.appendingPathComponent("data")
        for (k, cls) in ["a", "b"].enumerated() {
            let sub = data.appendingPathComponent(cls)
            try FileManager.default.createDirectory(at: sub, withIntermediateDirectories: true)
            for i in 0..<3 {
                var img = try RGBImage(width: 20, height: 16, fill: (UInt8(30 + 100 * k), UInt8(i * 70), 60))
                for y in 0..<16 { for x in 0..<20 { img.pixels[3 * (y * 20 + x) + 2] = UInt8((x * 12 + y * 3) % 256) } }
                try img.writePNG(to: sub.appendingPathComponent("\(i).png").path)
            }
        }
        let extra: [String: Any] = ["cache_latents": false, "random_crop": true, "max_steps": 5]
        let sync = try trainer(data, work.appendingPathComponent("sync"), extra.merging(["prefetch": false]) { $1 })
        let background = try trainer(data, work.appendingPathComponent("background"), extra)
        XCTAssertFalse(sync.loader.prefetch)
        XCTAssertTrue(background.loader.prefetch)
        try sync.train(); try background.train()
        XCTAssertEqual(sync.loader.prefetchedBatches, 0)
        // 5 steps x 2 micro-batches: every batch after the first came from the loader thread.
        XCTAssertEqual(background.loader.prefetchedBatches, 9)
        try assertBitIdentical(sync, background)
    }

    func testPrefetchedBatchesEqualSynchronousOnesAndErrorsSurface() throws {
        let work = try tempDirectory("loader")
        defer { try? FileManager.default.removeItem(at: work) }
        let data = work.appendingPathComponent("data")
        try writeTinyImageFolder(data)
        let ds = try ImageFolderDataset(root: data, size: 8)
        let sampler = try BatchSampler(dataset: ds, batchSize: 2, seed: 4)
        let loader = BatchLoader(sampler: sampler, prefetch: true)
        var position = (epoch: 0, index: 0)
        for _ in 0..<5 {
            let b = try loader.batch(epoch: position.epoch, index: position.index, prefetchNext: true)
            XCTAssertEqual(b.images.toArray(), try sampler.batch(epoch: position.epoch, index: position.index).images.toArray())
            position = sampler.position(after: position.epoch, position.index)
        }
        XCTAssertEqual(loader.prefetchedBatches, 4)
        // A jump (as after a resume) drops the prefetched batch (here of position (2, 1)) and builds the asked one.
        XCTAssertEqual(position.epoch, 2); XCTAssertEqual(position.index, 1)
        XCTAssertEqual(try loader.batch(epoch: 2, index: 0, prefetchNext: true).images.toArray(), try sampler.batch(epoch: 2, index: 0).images.toArray())
        XCTAssertEqual(try loader.batch(epoch: 7, index: 1, prefetchNext: false).images.toArray(), try sampler.batch(epoch: 7, index: 1).images.toArray())
        XCTAssertEqual(loader.prefetchedBatches, 4)

        // An example that fails on the loader thread fails the batch that needs it, on the training thread.
        try Data("broken".utf8).write(to: data.appendingPathComponent("b/1.png"))
        let broken = try XCTUnwrap(ds.files.firstIndex { $0.url.lastPathComponent == "1.png" && $0.label == 1 })
        let seed = try XCTUnwrap((0..<64).first { try BatchSampler(dataset: ds, batchSize: 2, seed: UInt64($0)).order(epoch: 0).suffix(2).contains(broken) })
        let failing = BatchLoader(sampler: try BatchSampler(dataset: ds, batchSize: 2, seed: UInt64(seed)), prefetch: true)
        XCTAssertNoThrow(try failing.batch(epoch: 0, index: 0, prefetchNext: true))
        XCTAssertThrowsError(try failing.batch(epoch: 0, index: 1, prefetchNext: false)) { XCTAssertTrue("\($0)".contains("1.png"), "\($0)") }
        XCTAssertEqual(failing.prefetchedBatches, 0)
    }

    func testCacheConfigErrors() throws {
        let work = try tempDirectory("cache-errors")
        defer { try? FileManager.default.removeItem(at: work) }
        let data = work.appendingPathComponent("data"), run = work.appendingPathComponent("run")
        try writeTinyImageFolder(data)
        XCTAssertThrowsError(try LDMTrainConfig.load(config(data: data, run: run, ["random_crop": true]))) {
            XCTAssertTrue("\($0)".contains("cache_latents needs random_crop false"), "\($0)")
        }
        var pixel = try LDMTrainConfig.load(config(data: data, run: run))
        XCTAssertThrowsError(try LDMTrainConfig.parse(JSONSerialization.data(withJSONObject: [
            "base_learning_rate": 1e-4, "batch_size": 2, "max_steps": 1, "ckpt_every": 1, "data_dir": data.path, "image_size": 16,
            "cache_latents": true, "random_crop": false, "unet_config": ["in_channels": 3, "out_channels": 3]]))) {
            XCTAssertTrue("\($0)".contains("cache_latents needs a first_stage"), "\($0)")
        }
        // Set in code, the same combinations fail when the trainer is built.
        pixel.firstStage = nil
        pixel.unetConfig?["in_channels"] = 3; pixel.unetConfig?["out_channels"] = 3
        XCTAssertThrowsError(try pixel.makeTrainer(runDir: run)) { XCTAssertTrue("\($0)".contains("needs a first_stage"), "\($0)") }
        var cropped = try LDMTrainConfig.load(config(data: data, run: run))
        cropped.randomCrop = true
        XCTAssertThrowsError(try cropped.makeTrainer(runDir: run)) { XCTAssertTrue("\($0)".contains("random_crop false"), "\($0)") }
        XCTAssertThrowsError(try LDMTrainConfig.load(config(data: data, run: run, ["prefetch": "yes"]))) {
            XCTAssertTrue("\($0)".contains("prefetch must be true or false"), "\($0)")
        }
    }
}
