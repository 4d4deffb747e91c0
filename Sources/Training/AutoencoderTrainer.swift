// The first-stage training loop of CompVis latent-diffusion (ldm/models/autoencoder.py AutoencoderKL / VQModel
// training_step with two optimizers under pytorch_lightning): optimizer 0 (encoder, decoder, quant_conv,
// post_quant_conv; and the codebook for VQ) minimises FirstStageLoss.autoencoderLoss, optimizer 1 (the discriminator)
// minimises the discriminator loss once disc_start is reached. Both are Adam(betas=(0.5, 0.9)) at the same lr.
// One deviation, for speed: Lightning runs a second forward pass for optimizer 1; we reuse the first pass's
// reconstructions (detached), which the discriminator loss sees detached in the reference too.
// Checkpoints, logs, resume and export follow Trainer (the LDM loop): everything a resumed run needs to continue bit
// for bit is in one safetensors file written atomically.
import Autoencoders
import Checkpoints
import Foundation
import Imaging
import NeuralNetwork
import TensorCore

/// Random torch-default-style weights for a first stage built from a config.
func initializeFirstStage(_ model: FirstStageModel, seed: UInt64) {
    switch model {
    case .kl(let m): initializeParameters(m, generator: TorchGenerator(seed: seed))
    case .vq(let m): initializeParameters(m, generator: TorchGenerator(seed: seed))
    }
}

extension FirstStageModel {
    public var module: Module {
        switch self {
            case .kl(let m): return m
            case .vq(let m): return m
        }
    }
    var lastLayer: Tensor {
        switch self {
            case .kl(let m): return m.decoder.convOut.weight
            case .vq(let m): return m.decoder.convOut.weight
        }
    }
    /// The diffusers component folder name: vae (AutoencoderKL) or vqvae (VQModel).
    public var folderName: String {
        switch self {
            case .kl: return "vae"
            case .vq: return "vqvae"
        }
    }
}

public struct AutoencoderLogEntry: Codable, Equatable {
    public var step: Int, epoch: Int, lr: Double
    /// The loss parts of both optimizers, named as the reference's log_dict ("total_loss", "rec_loss", "kl_loss",
    /// "nll_loss", "d_weight", "disc_loss", ...).
    public var losses: [String: Float]
    /// "bf16-mixed" for mixed-precision steps; absent for float32 ones.
    public var precision: String? = nil
}

public final class AutoencoderTrainer {
    public let model: FirstStageModel
    public let loss: FirstStageLoss
    public let loader: BatchLoader
    public var sampler: BatchSampler { loader.sampler }
    public let optimizer: AdamW
    public let discOptimizer: AdamW?
    public let generator: TorchGenerator
    public let runDir: URL
    public let learningRate: Double
    public let maxSteps: Int, checkpointEvery: Int, seed: UInt64
    public var lrSchedule: LRSchedule = .constant
    public var maxGradNorm: Float?
    public var sampleEvery: Int?
    public var exportDType: DType = .float32
    /// float32, or bf16 mixed precision: autocast around the autoencoder forward, its loss (LPIPS, the discriminator
    /// as the generator's critic, the adaptive weight's gradients) and the discriminator step; float32 master weights
    /// and optimizer state (Lightning's bf16-mixed).
    public var precision: TrainingPrecision = .float32
    public internal(set) var step = 0, epoch = 0, batchInEpoch = 0
    /// Called after each step with its log entry (on rank 0 only).
    public var onStep: ((AutoencoderLogEntry) -> Void)?
    /// The ranks of a data-parallel run (DataParallel.swift), as for Trainer: shards of each batch, gradients of both
    /// optimizers averaged, losses logged as their mean over the ranks, only rank 0 writes. The discriminator's
    /// BatchNorm layers are synchronised (SyncBatchNorm over the global batch), so the run does not depend on N.
    public let communicator: Communicator
    public let shard: BatchShard
    public let gradients: GradientAverager

    public var checkpointsDir: URL { runDir.appendingPathComponent("checkpoints") }
    public var logURL: URL { runDir.appendingPathComponent("loss.jsonl") }

    public init(model: FirstStageModel, loss: FirstStageLoss, dataset: TrainingDataset, batchSize: Int, learningRate: Double,
                maxSteps: Int, checkpointEvery: Int, seed: UInt64, betas: (Double, Double) = (0.5, 0.9), eps: Double = 1e-8,
                weightDecay: Double = 0, prefetch: Bool = true, runDir: URL, communicator: Communicator = SingleProcess()) throws {
        guard learningRate > 0, maxSteps > 0, checkpointEvery > 0 else { throw TrainingError("learning rate, max_steps and ckpt_every must be positive") }
        self.model = model
        self.loss = loss
        self.runDir = runDir
        self.learningRate = learningRate
        self.maxSteps = maxSteps
        self.checkpointEvery = checkpointEvery
        self.seed = seed
        self.communicator = communicator
        shard = try BatchShard(globalBatch: batchSize, rank: communicator.rank, count: communicator.size)
        gradients = GradientAverager(communicator: communicator)
        loader = BatchLoader(sampler: try BatchSampler(dataset: dataset, batchSize: batchSize, seed: seed), prefetch: prefetch, shard: shard)
        // Every rank starts from rank 0's weights (DDP), discriminator included.
        try communicator.broadcastFromRoot(model.module.namedParameters.map(\.1) + (loss.adversarial?.parameters.map(\.1) ?? []))
        if let patchGAN = loss.adversarial as? PatchGANLoss, communicator.size > 1 {
            patchGAN.averageAcrossRanks = { [communicator] in try communicator.averaged($0) }
            patchGAN.discriminator.synchronizedBatchNorm = communicator
        }
        optimizer = try AdamW(module: model.module, lr: learningRate, betas: betas, eps: eps, weightDecay: weightDecay)
        discOptimizer = try loss.adversarial.map { try AdamW(parameters: $0.parameters, lr: learningRate, betas: betas, eps: eps, weightDecay: weightDecay) }
        generator = TorchGenerator(seed: seed)
        if communicator.isRoot { try FileManager.default.createDirectory(at: checkpointsDir, withIntermediateDirectories: true) }
    }

    deinit { loader.finish() }

    /// forward(): encode, sample the posterior (KL) or quantise (VQ), decode. Returns the reconstructions and the
    /// posterior or codebook loss.
    func forward(_ x: Tensor) throws -> (Tensor, DiagonalGaussianDistribution?, Tensor?) {
        switch model {
        case .kl(let m):
            let posterior = DiagonalGaussianDistribution(m.encodeMoments(x))
            return (m.decodeWhole(posterior.sample(generator: generator, shard: shard)), posterior, nil)
        case .vq(let m):
            // VQModel.forward with gradients (its encode/decode methods are inference-only): encoder -> quant_conv ->
            // quantize (straight-through, codebook + commitment loss) -> post_quant_conv -> decoder.
            let q = try m.quantize(m.quantConv(m.encoder(x)))
            return (m.decoder(m.postQuantConv(q.quantized)), nil, q.loss)
        }
    }

    @discardableResult
    public func trainStep() throws -> AutoencoderLogEntry {
        // The next batch is decoded in the background while this step runs (BatchLoader).
        let batch = try loader.batch(epoch: epoch, index: batchInEpoch, prefetchNext: step + 1 < maxSteps)
        let lr = learningRate * lrSchedule.multiplier(step: step)
        optimizer.lr = lr
        discOptimizer?.lr = lr
        let x = batch.images
        let (rec, posterior, qloss) = try precision.forward { try forward(x) }
        optimizer.zeroGrad()
        var (aeLoss, log) = try precision.forward {
            try loss.autoencoderLoss(inputs: x, reconstructions: rec, posterior: posterior, codebookLoss: qloss,
                                     globalStep: step, lastLayer: model.lastLayer)
        }
        guard aeLoss.item.isFinite else { throw TrainingError("autoencoder loss is \(aeLoss.item) at step \(step + 1)") }
        try gradients.backward(aeLoss, parameters: optimizer.parameters.map(\.1))
        if let n = maxGradNorm { log["grad_norm"] = clipGradNorm(optimizer.parameters.map(\.1), maxNorm: n) }
        optimizer.step()
        if let adversarial = loss.adversarial, let discOptimizer,
           let (dLoss, dlog) = try precision.forward({
               try adversarial.discriminatorLoss(inputs: x.detach(), reconstructions: rec.detach(), globalStep: step)
           }) {
            discOptimizer.zeroGrad()
            guard dLoss.item.isFinite else { throw TrainingError("discriminator loss is \(dLoss.item) at step \(step + 1)") }
            try gradients.backward(dLoss, parameters: discOptimizer.parameters.map(\.1))
            discOptimizer.step()
            log.merge(dlog) { $1 }
        }
        batchInEpoch += 1
        if batchInEpoch == sampler.batchesPerEpoch {
            batchInEpoch = 0
            epoch += 1
        }
        step += 1
        // Shard means averaged: the global batch's values (grad_norm, computed from averaged gradients, is already).
        let gradNorm = log["grad_norm"]
        log = try communicator.average(log)
        if let gradNorm { log["grad_norm"] = gradNorm }
        let entry = AutoencoderLogEntry(step: step, epoch: epoch, lr: lr, losses: log,
                                        precision: precision == .float32 ? nil : precision.rawValue)
        guard communicator.isRoot else { return entry }
        try appendJSONLine(entry, to: logURL)
        onStep?(entry)
        if step % checkpointEvery == 0 || step == maxSteps { try saveCheckpoint() }
        if let every = sampleEvery, step % every == 0 { try writeReconstructionGrid() }
        return entry
    }

    /// Trains until max_steps (or `steps` more), then exports the weights.
    public func train(steps: Int? = nil) throws {
        let end = min(maxSteps, steps.map { step + $0 } ?? maxSteps)
        while step < end { try trainStep() }
        if step == maxSteps && communicator.isRoot { try export() }
    }

    /// The first `count` images of the data (centre crop, no flip), as a batch.
    func fixedImages(count: Int) throws -> Tensor {
        let n = min(count, sampler.dataset.count)
        let examples = try (0..<n).map { try sampler.dataset.example(at: $0, generator: TorchGenerator(seed: seed)).image.unsqueezed(0) }
        return concat(examples, axis: 0)
    }

    /// Inputs (top row) and their reconstructions (posterior mode / quantised; bottom row) to samples/step-N.png.
    public func writeReconstructionGrid(count: Int = 8) throws {
        let x = try fixedImages(count: count)
        let rec = try GradMode.noGrad { () -> Tensor in
            switch model {
            case .kl(let m): return try m.reconstruct(x, tiled: .never)
            case .vq(let m): return try m.reconstruct(x)
            }
        }
        let (n, h, w) = (x.shape[0], x.shape[2], x.shape[3])
        let images = try [x, rec].flatMap { t -> [RGBImage] in
            let v = t.float32().contiguous().toArray(), per = v.count / n
            return try (0..<n).map { try VaeImageProcessor.toImage(Array(v[($0 * per)..<(($0 + 1) * per)]), height: h, width: w) }
        }
        let dir = runDir.appendingPathComponent("samples")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        try imageGrid(images, rows: 2).writePNG(to: dir.appendingPathComponent(String(format: "step-%08d.png", step)).path, overwrite: true)
    }

    /// 1 / std of posterior samples (KL) or pre-quantisation latents (VQ) of up to 256 data images: the diffusers
    /// `scaling_factor` written into the exported config (CompVis scale_by_std computes it the same way).
    public func latentScalingFactor() throws -> Float {
        let x = try fixedImages(count: 256)
        let g = TorchGenerator(seed: seed)
        let z = try GradMode.noGrad { () -> Tensor in
            switch model {
            case .kl(let m): return try m.encode(x, tiled: .never).sample(generator: g)
            case .vq(let m): return try m.encode(x)
            }
        }
        return try scaleFactorByStd(z)
    }

    /// RUN_DIR/vae/ (or vqvae/): diffusers config.json with the measured scaling_factor and the weights in export_dtype.
    public func export() throws {
        let dir = runDir.appendingPathComponent(model.folderName)
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        let scale = try latentScalingFactor()
        var config: [String: Any]
        switch model {
        case .kl(let m):
            var c = m.config
            c.scalingFactor = scale
            config = try JSONSerialization.jsonObject(with: encoder.encode(c)) as! [String: Any]
        case .vq(let m):
            var c = m.config
            c.scalingFactor = scale
            config = try JSONSerialization.jsonObject(with: encoder.encode(c)) as! [String: Any]
        }
        config["_class_name"] = model.folderName == "vae" ? "AutoencoderKL" : "VQModel"
        try JSONSerialization.data(withJSONObject: config, options: [.prettyPrinted, .sortedKeys])
            .write(to: dir.appendingPathComponent("config.json"), options: .atomic)
        try model.module.save(to: dir.appendingPathComponent("diffusion_pytorch_model.safetensors"), dtype: exportDType,
                              metadata: ["step": String(step)])
    }
}

/// Appends one JSON line (sorted keys) to `url`, creating the file.
func appendJSONLine<T: Encodable>(_ value: T, to url: URL) throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = .sortedKeys
    var line = try encoder.encode(value)
    line.append(0x0A)
    if !FileManager.default.fileExists(atPath: url.path) {
        guard FileManager.default.createFile(atPath: url.path, contents: nil) else { throw TrainingError("cannot create \(url.path)") }
    }
    let h = try FileHandle(forWritingTo: url)
    defer { try? h.close() }
    try h.seekToEnd()
    try h.write(contentsOf: line)
}
