// Builds a LoRA training run on a loaded base model, as kohya-ss train_network.py does (frozen UNet, VAE and text
// encoder; the network's parameters are the only ones in the optimizer) with the loss of the LDM trainer: the Trainer
// (Trainer.swift) runs the steps (noise, timestep, target from the base scheduler's prediction_type, bf16-mixed via
// MixedPrecision), with `trainsModel: false` and the LoRANetwork as its only trained module; its checkpoints hold the
// adapters, the AdamW moments, the generator and the data position, so a resumed run continues bit for bit. At the end
// the adapters are written as a kohya-format LoRA file.
import Autoencoders
import Conditioning
import Diffusion
import Foundation
import NeuralNetwork
import TensorCore
import Tokenizers
import UNetModels

/// The parts of a base model a LoRA trains on (from a pipeline folder or single file, loaded by the caller).
public struct LoRABaseModel {
    public var unet: UNet2DConditionModel
    public var firstStage: FirstStageModel?
    public var textEncoder: CLIPTextModel
    public var tokenizer: CLIPTokenizer
    public var schedulerConfig: SchedulerConfig
    /// The image size the model generates by default (sample_size x the first stage's downsampling factor).
    public var defaultImageSize: Int
    /// For the file's ss_sd_model_name.
    public var name: String
    public init(unet: UNet2DConditionModel, firstStage: FirstStageModel?, textEncoder: CLIPTextModel, tokenizer: CLIPTokenizer,
                schedulerConfig: SchedulerConfig, defaultImageSize: Int, name: String) {
        self.unet = unet
        self.firstStage = firstStage
        self.textEncoder = textEncoder
        self.tokenizer = tokenizer
        self.schedulerConfig = schedulerConfig
        self.defaultImageSize = defaultImageSize
        self.name = name
    }
}

/// A LoRA run: the Trainer and its network.
public final class LoRATrainer {
    public let trainer: Trainer
    public let network: LoRANetwork
    public let config: LoRATrainConfig
    public let base: LoRABaseModel
    public let outputURL: URL
    public let resolution: Int

    init(trainer: Trainer, network: LoRANetwork, config: LoRATrainConfig, base: LoRABaseModel, outputURL: URL, resolution: Int) {
        self.trainer = trainer
        self.network = network
        self.config = config
        self.base = base
        self.outputURL = outputURL
        self.resolution = resolution
    }

    /// kohya's ss_* training metadata (the keys A1111 and kohya's tools read), without time stamps so that the same
    /// run writes the same file.
    public var metadata: [String: String] {
        let c = config
        var m: [String: String] = [
            "ss_network_module": "networks.lora", "ss_network_dim": String(c.rank),
            "ss_network_alpha": String(c.effectiveAlpha), "ss_learning_rate": String(c.learningRate),
            "ss_unet_lr": String(c.learningRate), "ss_text_encoder_lr": network.trainsTextEncoder ? String(c.learningRate) : "0",
            "ss_network_train_unet_only": network.trainsTextEncoder ? "False" : "True",
            "ss_max_train_steps": String(c.maxSteps), "ss_steps": String(trainer.step), "ss_epoch": String(trainer.epoch),
            "ss_batch_size_per_device": String(c.batchSize), "ss_gradient_accumulation_steps": String(c.gradientAccumulationSteps),
            "ss_resolution": "(\(resolution), \(resolution))", "ss_seed": String(c.seed),
            "ss_num_train_images": String(trainer.sampler.dataset.count), "ss_mixed_precision": c.precision == .bf16Mixed ? "bf16" : "no",
            "ss_lr_scheduler": c.lrScheduler, "ss_lr_warmup_steps": String(c.lrWarmupSteps),
            "ss_max_grad_norm": c.maxGradNorm.map { String($0) } ?? "0.0", "ss_optimizer": "torch.optim.AdamW",
            "ss_sd_model_name": base.name, "ss_output_name": c.outputName, "ss_v2": "False",
            "ss_caption_dropout_rate": String(c.condDropProb), "ss_flip_aug": c.randomFlip ? "True" : "False",
            "ss_training_comment": "ldm train lora",
            "ss_save_precision": c.saveDType.rawValue,
        ]
        var targets: [String] = []
        if c.targets.attention { targets.append("attention") }
        if c.targets.projections { targets.append("projections") }
        if c.targets.feedForward { targets.append("feed_forward") }
        m["ss_network_args"] = "{\"targets\": [" + targets.map { "\"\($0)\"" }.joined(separator: ", ") + "]}"
        return m
    }

    /// Writes the LoRA file (atomically) and returns its URL.
    @discardableResult
    public func export() throws -> URL {
        try FileManager.default.createDirectory(at: outputURL.deletingLastPathComponent(), withIntermediateDirectories: true)
        try network.save(to: outputURL, dtype: config.saveDType, metadata: metadata)
        return outputURL
    }
}

extension LoRATrainConfig {
    /// Wires the run and checks that the parts fit together before any step. `runDir` holds checkpoints, loss.jsonl
    /// and (by default) the LoRA file; with cache_latents also the latent cache.
    public func makeTrainer(base: LoRABaseModel, runDir: URL, communicator: Communicator = SingleProcess(),
                            log: (String) -> Void = { _ in }) throws -> LoRATrainer {
        let unet = base.unet
        guard let firstStage = base.firstStage else { throw TrainingError("\(baseModel): LoRA training needs a latent model with a first stage (VAE)") }
        let encoder: LatentEncoder, down: Int, latentChannels: Int
        switch firstStage {
        case .kl(let m):
            encoder = .kl(m)
            down = m.downsamplingFactor
            latentChannels = m.config.latentChannels
        case .vq(let m):
            encoder = .vq(m)
            down = m.downsamplingFactor
            latentChannels = m.config.embedDim
        }
        guard unet.config.inChannels == latentChannels else {
            throw TrainingError("\(baseModel): the UNet takes \(unet.config.inChannels) input channels, the first stage gives \(latentChannels) (inpainting UNets are not supported)")
        }
        guard !unet.config.usesTextTimeEmbedding, unet.classEmbedding == nil, unet.classTimestepEmbedding == nil else {
            throw TrainingError("\(baseModel): LoRA training supports text-conditioned UNets with one CLIP text encoder (SD 1.x / 2.x style), not SDXL or class-conditional ones")
        }
        guard base.textEncoder.config.hiddenSize == unet.config.crossAttentionDim?.first else {
            throw TrainingError("\(baseModel): text encoder width \(base.textEncoder.config.hiddenSize) does not match the UNet's cross_attention_dim")
        }
        let size = resolution ?? base.defaultImageSize
        let levels = 1 << max(unet.config.blockOutChannels.count - 1, 0)
        guard size % (down * levels) == 0 else {
            throw TrainingError("resolution \(size) must be a multiple of \(down * levels) (first stage factor \(down) x \(levels) UNet levels)")
        }
        let parameterization: Parameterization
        switch base.schedulerConfig.predictionType ?? "epsilon" {
        case "epsilon": parameterization = .eps
        case "v_prediction": parameterization = .v
        case "sample": parameterization = .x0
        case let p: throw TrainingError("\(baseModel): scheduler prediction_type \"\(p)\" is not one of epsilon, v_prediction, sample")
        }
        let schedule = try base.schedulerConfig.noiseSchedule()

        let dataset = try ImageFolderDataset(root: URL(fileURLWithPath: dataDir), size: size, randomCrop: randomCrop, randomFlip: randomFlip)
        guard dataset.classCount == nil else { throw TrainingError("data_dir \(dataDir) has sub-folders; LoRA training reads one folder of captioned images") }
        if let missing = dataset.files.first(where: { !FileManager.default.fileExists(atPath: $0.url.deletingPathExtension().appendingPathExtension("txt").path) }) {
            throw TrainingError("\(missing.url.path) has no caption (.txt beside it)")
        }
        guard dataset.count >= batchSize else { throw TrainingError("batch_size \(batchSize) is larger than the \(dataset.count) images of \(dataDir)") }

        let network = try LoRANetwork(unet: unet, textEncoder: base.textEncoder, targets: targets, rank: rank, alpha: effectiveAlpha,
                                      generator: TorchGenerator(seed: seed &+ 2))
        // Trainable when the text encoder carries adapters: its output then keeps the graph to them.
        let text = try TextConditioner(model: base.textEncoder, tokenizer: base.tokenizer, tokenizerSource: baseModel,
                                       sourceFolder: nil, trainable: targets.textEncoder)
        let nullText: Tensor? = condDropProb > 0 && !targets.textEncoder ? try text.encode([""]) : nil
        let loss = try DiffusionLoss(schedule: schedule, parameterization: parameterization, condDropProb: condDropProb, nullText: nullText)
        var options = try trainerOptions()
        options.scaleFactor = firstStage.scalingFactor
        var cache: LatentCache?
        if cacheLatents {
            if !communicator.isRoot { try communicator.barrier() }
            cache = try LatentCache.loadOrBuild(dataset: dataset, encoder: encoder, runDir: runDir, batchSize: batchSize, log: log)
            if communicator.isRoot { try communicator.barrier() }
        }
        let trained: [(prefix: String, module: Module)] = [("lora.", network)]
        let trainer = try Trainer(model: unet, loss: loss, encoder: encoder,
                                  dataset: try cache.map { try CachedLatentDataset(cache: $0, source: dataset) } ?? dataset,
                                  options: options, runDir: runDir, extraModules: trained, trainsModel: false,
                                  communicator: communicator)
        trainer.textConditioner = text
        trainer.makeConditioning = { batch in
            guard let captions = batch.captions else { throw TrainingError("a batch lacks captions") }
            return .text(try text.encode(captions))
        }
        if targets.textEncoder, condDropProb > 0 { trainer.nullTextEmbedding = { try text.encode([""]) } }
        let run = LoRATrainer(trainer: trainer, network: network, config: self, base: base, outputURL: outputURL(runDir: runDir), resolution: size)
        trainer.customExport = { [unowned run] in _ = try run.export() }
        return run
    }
}
