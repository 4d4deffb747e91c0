// The training loop of CompVis LatentDiffusion (main.py + pytorch_lightning: training_step -> backward ->
// optimizer.step -> on_train_batch_end LitEma update, ModelCheckpoint every N steps) and diffusers
// examples/text_to_image (gradient accumulation, clip_grad_norm_, lr_scheduler, save_state / resume_from_checkpoint).
// Checkpoints (see TrainingCheckpoint.swift) hold everything a resumed run needs to continue bit for bit.
// Data: a BatchLoader prepares the next batch on a background thread during each step (BatchLoader.swift); with a
// latent cache (LatentCache.swift) the batches hold the first stage's cached outputs, and the posterior sample is
// drawn here from the training generator at the same point of the step as an encode would draw it.
import Foundation
import Imaging
import NeuralNetwork
import TensorCore
import UNetModels

public struct TrainerOptions {
    public var learningRate: Double
    public var betas: (Double, Double) = (0.9, 0.999)
    public var adamEps: Double = 1e-8
    public var weightDecay: Double = 1e-2
    /// clip_grad_norm_ max norm; nil disables clipping.
    public var maxGradNorm: Float? = 1
    public var gradientAccumulationSteps = 1
    public var lrSchedule: LRSchedule = .constant
    /// LitEma decay; nil disables EMA.
    public var emaDecay: Float? = 0.9999
    public var batchSize: Int
    public var maxSteps: Int
    public var checkpointEvery: Int
    /// Steps between sample grids (only when a sample callback is set).
    public var sampleEvery: Int?
    public var seed: UInt64
    /// scale_by_std: scale_factor = 1 / std of the first batch's latents; otherwise `scaleFactor`.
    public var scaleByStd = false
    public var scaleFactor: Float = 1
    /// Storage type of the exported weights (unet/ and pipeline/).
    public var exportDType: DType = .float32
    /// Prepare the next batch on a background thread while a step runs (same batches as without).
    public var prefetch = true
    /// float32, or bf16 mixed precision (autocast around the conditioning, UNet forward and loss; float32 master
    /// weights, optimizer state and EMA). The frozen first-stage encode stays float32 (its latents are data).
    public var precision: TrainingPrecision = .float32

    public init(learningRate: Double, batchSize: Int, maxSteps: Int, checkpointEvery: Int, seed: UInt64) {
        self.learningRate = learningRate
        self.batchSize = batchSize
        self.maxSteps = maxSteps
        self.checkpointEvery = checkpointEvery
        self.seed = seed
    }

    public func validate() throws {
        guard learningRate > 0, learningRate.isFinite else { throw TrainingError("learning rate must be positive, got \(learningRate)") }
        guard batchSize > 0 else { throw TrainingError("batch_size must be positive, got \(batchSize)") }
        guard maxSteps > 0 else { throw TrainingError("max_steps must be positive, got \(maxSteps)") }
        guard checkpointEvery > 0 else { throw TrainingError("ckpt_every must be positive, got \(checkpointEvery)") }
        guard gradientAccumulationSteps > 0 else { throw TrainingError("gradient accumulation steps must be positive") }
        if let n = maxGradNorm, !(n > 0) { throw TrainingError("max_grad_norm must be positive, got \(n)") }
        if let s = sampleEvery, s <= 0 { throw TrainingError("sample_every must be positive, got \(s)") }
        guard scaleFactor > 0, scaleFactor.isFinite else { throw TrainingError("scale_factor must be positive, got \(scaleFactor)") }
    }
}

/// One logged optimizer step.
public struct TrainingLogEntry: Codable, Equatable {
    public var step: Int, epoch: Int, loss: Float, lr: Double, gradNorm: Float?
    /// "bf16-mixed" for mixed-precision steps; absent (nil) for float32 ones.
    public var precision: String?
    enum CodingKeys: String, CodingKey { case step, epoch, loss, lr, gradNorm = "grad_norm", precision }
    public init(step: Int, epoch: Int, loss: Float, lr: Double, gradNorm: Float?, precision: String? = nil) {
        self.step = step
        self.epoch = epoch
        self.loss = loss
        self.lr = lr
        self.gradNorm = gradNorm
        self.precision = precision
    }
}

public final class Trainer {
    public let model: UNet2DConditionModel
    public internal(set) var loss: DiffusionLoss
    /// Modules trained with the UNet (CompVis cond_stage_trainable: the text encoder), keyed by their checkpoint
    /// prefix ("text_encoder."): their parameters join the optimizer under "<prefix><name>"; EMA covers the UNet only
    /// (CompVis LitEma(self.model)).
    public let extraModules: [(prefix: String, module: Module)]
    /// Whether the UNet's own parameters are trained (false: LoRA training, where only `extraModules` are; the UNet is
    /// frozen: not in the optimizer, no EMA, not in checkpoints).
    public let trainsModel: Bool
    /// Replaces `exportWeights`' unet/ + pipeline/ (e.g. a LoRA file).
    public var customExport: (() throws -> Void)?
    /// The text conditioning (frozen or trainable CLIP text encoder + tokenizer), for sample grids and the export.
    public var textConditioner: TextConditioner?
    /// Recomputes the empty-prompt embedding used for conditioning dropout before every micro-batch (a trainable text
    /// encoder changes it each step, and its gradient flows through it).
    public var nullTextEmbedding: (() throws -> Tensor)?
    /// What `exportWeights` writes to RUN_DIR/pipeline beside unet/ (nil: unet/ only, e.g. pixel-space training).
    public var pipelineExport: PipelineExportSpec?
    public let encoder: LatentEncoder
    public let loader: BatchLoader
    public var sampler: BatchSampler { loader.sampler }
    /// Set when the dataset is a CachedLatentDataset: its batches hold the first stage's cached outputs (KL moments /
    /// VQ latents) instead of images.
    public let latentCache: LatentCache?
    public let options: TrainerOptions
    public let runDir: URL
    public let optimizer: AdamW
    public let ema: LitEma?
    /// Draws timesteps, noise, dropout masks and posterior samples.
    public let generator: TorchGenerator
    public internal(set) var step = 0
    public internal(set) var epoch = 0
    public internal(set) var batchInEpoch = 0
    public internal(set) var scaleFactor: Float?
    /// Maps a batch to the UNet conditioning; the default uses class labels when the UNet has a class embedding.
    public var makeConditioning: (TrainingBatch) throws -> TrainingConditioning
    /// Renders a sample grid with the model (EMA weights swapped in); written to samples/step-N.png.
    public var sampleCallback: ((UNet2DConditionModel, Int) throws -> RGBImage)?
    /// Called after each step with its log entry (on rank 0 only).
    public var onStep: ((TrainingLogEntry) -> Void)?
    /// The ranks of a data-parallel run (DataParallel.swift); one process by default. Each rank loads `shard` of every
    /// batch, gradients are averaged by `gradients` (overlapped with the last backward) before clipping and the
    /// optimizer step, and only rank 0 writes (checkpoints, loss.jsonl, samples, the export).
    public let communicator: Communicator
    public let shard: BatchShard
    public let gradients: GradientAverager

    public var checkpointsDir: URL { runDir.appendingPathComponent("checkpoints") }
    public var logURL: URL { runDir.appendingPathComponent("loss.jsonl") }

    public init(model: UNet2DConditionModel, loss: DiffusionLoss, encoder: LatentEncoder = .identity,
                dataset: TrainingDataset, options: TrainerOptions, runDir: URL,
                extraModules: [(prefix: String, module: Module)] = [], trainsModel: Bool = true,
                communicator: Communicator = SingleProcess()) throws {
        try options.validate()
        guard trainsModel || !extraModules.isEmpty else { throw TrainingError("nothing to train: the UNet is frozen and there are no extra modules") }
        for (i, e) in extraModules.enumerated() {
            guard e.prefix.hasSuffix("."), !["model.", "ema.", "optimizer."].contains(e.prefix),
                  !extraModules[..<i].contains(where: { $0.prefix == e.prefix }) else {
                throw TrainingError("extra module prefix \"\(e.prefix)\" must end in \".\" and be unique (not model., ema., optimizer.)")
            }
        }
        self.model = model
        self.loss = loss
        self.encoder = encoder
        self.options = options
        self.runDir = runDir
        self.extraModules = extraModules
        self.trainsModel = trainsModel
        self.communicator = communicator
        shard = try BatchShard(globalBatch: options.batchSize, rank: communicator.rank, count: communicator.size)
        gradients = GradientAverager(communicator: communicator)
        loader = BatchLoader(sampler: try BatchSampler(dataset: dataset, batchSize: options.batchSize, seed: options.seed),
                             prefetch: options.prefetch, shard: shard)
        latentCache = (dataset as? CachedLatentDataset)?.cache
        if latentCache != nil, case .identity = encoder { throw TrainingError("a latent cache needs the first stage it was made with") }
        // CompVis configure_optimizers: params = model.parameters() (+ cond_stage_model.parameters() when trainable).
        let extraParams = extraModules.flatMap { e in e.module.namedParameters.map { (e.prefix + $0.0, $0.1) } }
        // DDP's constructor: every rank starts from rank 0's weights.
        let modelParams = trainsModel ? model.namedParameters : []
        try communicator.broadcastFromRoot((modelParams + extraParams).map(\.1))
        optimizer = try AdamW(parameters: modelParams + extraParams, lr: options.learningRate, betas: options.betas,
                              eps: options.adamEps, weightDecay: options.weightDecay)
        ema = trainsModel ? try options.emaDecay.map { try LitEma(module: model, decay: $0) } : nil
        generator = TorchGenerator(seed: options.seed)
        let hasClasses = model.classEmbedding != nil || model.classTimestepEmbedding != nil
        makeConditioning = { batch in
            guard hasClasses else { return .none }
            guard let labels = batch.classLabels else { throw TrainingError("the UNet is class-conditional but the data has no class labels") }
            return .classLabels(labels)
        }
        if communicator.isRoot { try FileManager.default.createDirectory(at: checkpointsDir, withIntermediateDirectories: true) }
    }

    deinit { loader.finish() }

    /// The batch at the current data position; with `prefetchNext` the loader starts on the following one.
    func nextBatch(prefetchNext: Bool) throws -> TrainingBatch {
        let batch = try loader.batch(epoch: epoch, index: batchInEpoch, prefetchNext: prefetchNext)
        batchInEpoch += 1
        if batchInEpoch == sampler.batchesPerEpoch {
            batchInEpoch = 0
            epoch += 1
        }
        return batch
    }

    /// One optimizer step over `gradientAccumulationSteps` micro-batches; returns the (accumulated) loss.
    @discardableResult
    public func trainStep() throws -> TrainingLogEntry {
        let params = optimizer.parameters
        optimizer.zeroGrad()
        optimizer.lr = options.learningRate * options.lrSchedule.multiplier(step: step)
        let accum = options.gradientAccumulationSteps
        var total: Float = 0
        for micro in 0..<accum {
            if let nullTextEmbedding { loss.nullText = try options.precision.forward { try nullTextEmbedding() } }
            let batch = try nextBatch(prefetchNext: micro + 1 < accum || step + 1 < options.maxSteps)
            let z = try latentCache == nil ? encoder.encode(batch.images, generator: generator, shard: shard)
                                           : encoder.latents(fromCached: batch.images, generator: generator, shard: shard)
            if scaleFactor == nil { scaleFactor = try options.scaleByStd ? scaleFactorByStd(z, communicator: communicator) : options.scaleFactor }
            let latents = z * (scaleFactor ?? 1)
            let out = try options.precision.forward {
                try loss(model: model, latents: latents, conditioning: try makeConditioning(batch), generator: generator, shard: shard)
            }
            let l = accum > 1 ? out.loss / Float(accum) : out.loss
            let value = l.item
            guard value.isFinite else { throw TrainingError("loss is \(value) at step \(step + 1)") }
            total += value
            // Data-parallel: the last micro-batch's backward averages the gradients over the ranks, in buckets
            // overlapped with the pass (DDP; the others accumulate locally, as under no_sync).
            try gradients.backward(l, parameters: params.map(\.1), reduce: micro + 1 == accum)
        }
        // The mean over ranks of their shard means: the global batch's loss.
        total = Float(try communicator.average(Double(total)))
        let gradNorm = options.maxGradNorm.map { clipGradNorm(params.map(\.1), maxNorm: $0) }
        optimizer.step()
        if let ema { ema.update(model.namedParameters) }
        step += 1
        let entry = TrainingLogEntry(step: step, epoch: epoch, loss: total, lr: optimizer.lr, gradNorm: gradNorm,
                                     precision: options.precision == .float32 ? nil : options.precision.rawValue)
        guard communicator.isRoot else { return entry }
        try appendLog(entry)
        onStep?(entry)
        if step % options.checkpointEvery == 0 || step == options.maxSteps { try saveCheckpoint() }
        if let every = options.sampleEvery, step % every == 0, sampleCallback != nil { try writeSample() }
        return entry
    }

    /// Trains until `options.maxSteps` (or `steps` more steps), then exports the final weights.
    public func train(steps: Int? = nil) throws {
        let end = min(options.maxSteps, steps.map { step + $0 } ?? options.maxSteps)
        while step < end { try trainStep() }
        if step == options.maxSteps && communicator.isRoot { try exportWeights() }
    }

    func appendLog(_ entry: TrainingLogEntry) throws { try appendJSONLine(entry, to: logURL) }

    /// Runs `body` with the EMA weights in the model (CompVis ema_scope), restoring the trained weights after.
    public func withEMAWeights<T>(_ body: () throws -> T) rethrows -> T {
        guard let ema else { return try body() }
        let params = model.namedParameters
        let saved = params.map { $0.1.copied() }
        ema.copy(to: params)
        defer { for ((_, p), s) in zip(params, saved) { p.assign(s) } }
        return try body()
    }

    func writeSample() throws {
        guard let callback = sampleCallback else { return }
        let image = try withEMAWeights { try GradMode.noGrad { try callback(model, step) } }
        let dir = runDir.appendingPathComponent("samples")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        try image.writePNG(to: dir.appendingPathComponent(String(format: "step-%08d.png", step)).path, overwrite: true)
    }

    /// Writes `unet/` (diffusers layout: config.json + diffusion_pytorch_model.safetensors in `options.exportDType`)
    /// with the EMA weights when EMA is on, the trained weights otherwise; then `pipeline/` when `pipelineExport` is set.
    public func exportWeights() throws {
        if let customExport {
            try customExport()
            return
        }
        let dir = runDir.appendingPathComponent("unet")
        try writeUNet(to: dir)
        if pipelineExport != nil { try exportPipeline(unetFolder: dir) }
    }

    func writeUNet(to dir: URL) throws {
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        var config = try JSONSerialization.jsonObject(with: JSONEncoder().encode(model.config)) as? [String: Any] ?? [:]
        // diffusers' default image size is unet.config.sample_size * vae_scale_factor: the training latent size.
        if let size = pipelineExport?.sampleSize { config["sample_size"] = size }
        try writeJSON(config, to: dir.appendingPathComponent("config.json"))
        try withEMAWeights {
            try model.save(to: dir.appendingPathComponent("diffusion_pytorch_model.safetensors"), dtype: options.exportDType,
                           metadata: ["step": String(step), "weights": ema == nil ? "trained" : "ema"])
        }
    }
}

/// Pretty-printed JSON with sorted keys and unescaped slashes (as diffusers' to_json_string), written atomically.
func writeJSON(_ object: Any, to url: URL) throws {
    var data = try JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])
    data.append(0x0A)
    try data.write(to: url, options: .atomic)
}
