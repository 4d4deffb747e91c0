// Builds a Trainer from an LDMTrainConfig, as CompVis main.py instantiates LatentDiffusion (UNet, frozen first stage,
// optional class or text conditioning, the text encoder frozen or trained with the UNet) and the data module,
// checking that the parts fit together before any step runs.
import Autoencoders
import Checkpoints
import Conditioning
import DiffusersBlocks
import Foundation
import NeuralNetwork
import TensorCore
import Tokenizers
import UNetModels

extension LDMTrainConfig {
    /// The UNet: a diffusers folder with weights (fine-tuning), a folder / config.json without weights or an inline
    /// config (random torch-style initialisation from `seed`).
    public func makeUNet() throws -> UNet2DConditionModel {
        if let inline = unetConfig {
            let data = try JSONSerialization.data(withJSONObject: inline)
            return try UNet2DConditionModel.random(config: UNetConfig.decode(data), seed: seed)
        }
        guard let unet else { throw TrainingError("no unet or unet_config given") }
        var isDir: ObjCBool = false
        _ = FileManager.default.fileExists(atPath: unet, isDirectory: &isDir)
        let url = URL(fileURLWithPath: unet)
        if isDir.boolValue {
            let hasWeights = ((try? FileManager.default.contentsOfDirectory(atPath: unet)) ?? [])
                .contains { $0.hasPrefix("diffusion_pytorch_model") }
            if hasWeights { return try UNet2DConditionModel(pretrainedFolder: url) }
            return try UNet2DConditionModel.random(config: UNetConfig.decode(Data(contentsOf: url.appendingPathComponent("config.json"))), seed: seed)
        }
        return try UNet2DConditionModel.random(config: UNetConfig.decode(Data(contentsOf: url)), seed: seed)
    }

    /// Everything wired and checked; `runDir` holds checkpoints, loss.jsonl, the exported unet/ and, with
    /// cache_latents, the latent cache (built here when missing or stale; `log` reports it).
    /// With a `communicator` of several ranks (data-parallel), rank 0 builds the latent cache while the others wait,
    /// then they load it; `log` should print on rank 0 only.
    public func makeTrainer(runDir: URL, communicator: Communicator = SingleProcess(), log: (String) -> Void = { _ in }) throws -> Trainer {
        let model = try makeUNet()
        let encoder: LatentEncoder
        var latentChannels = 3, downsampling = 1, defaultScale: Float = 1
        var firstStageFolder: URL?
        if let firstStage {
            let (fs, _) = try FirstStageModel.load(folder: URL(fileURLWithPath: firstStage))
            firstStageFolder = Self.firstStageComponentFolder(URL(fileURLWithPath: firstStage))
            switch fs {
            case .kl(let m):
                encoder = .kl(m)
                latentChannels = m.config.latentChannels
                downsampling = m.downsamplingFactor
            case .vq(let m):
                encoder = .vq(m)
                latentChannels = m.config.embedDim
                downsampling = m.downsamplingFactor
            }
            defaultScale = fs.scalingFactor
        } else {
            encoder = .identity
        }
        guard imageSize % downsampling == 0 else {
            throw TrainingError("image_size \(imageSize) must be a multiple of the first stage's downsampling factor \(downsampling)")
        }
        let levels = 1 << max(model.config.blockOutChannels.count - 1, 0)
        guard (imageSize / downsampling) % levels == 0 else {
            throw TrainingError("latent size \(imageSize / downsampling) must be a multiple of \(levels) for a UNet with \(model.config.blockOutChannels.count) levels")
        }
        guard model.config.inChannels == latentChannels, model.config.outChannels == latentChannels else {
            throw TrainingError("UNet in/out channels \(model.config.inChannels)/\(model.config.outChannels) do not match the \(latentChannels) latent channels")
        }
        let usesCross = model.downBlocks.contains { $0.attentions.first is Transformer2DModel }
            || model.upBlocks.contains { $0.attentions.first is Transformer2DModel }
        guard usesCross == (conditioning == .text) else {
            throw TrainingError(usesCross ? "the UNet has cross-attention: set conditioning \"text\" (with text_encoder and tokenizer)"
                                          : "conditioning \"text\" needs a UNet with cross-attention blocks")
        }
        let dataset = try ImageFolderDataset(root: URL(fileURLWithPath: dataDir), size: imageSize, randomCrop: randomCrop, randomFlip: randomFlip)
        let classEmbeds = model.classEmbedding?.weight.shape[0]
        var nullClass: Int?
        var nullText: Tensor?
        var textConditioning: ((TrainingBatch) throws -> TrainingConditioning)?
        var text: TextConditioner?
        switch conditioning {
        case .none:
            guard classEmbeds == nil, model.classTimestepEmbedding == nil else {
                throw TrainingError("conditioning is \"none\" but the UNet has a class embedding")
            }
        case .class:
            guard let n = classEmbeds else { throw TrainingError("conditioning is \"class\" but the UNet has no num_class_embeds") }
            guard let found = dataset.classCount else { throw TrainingError("conditioning is \"class\" but \(dataDir) has no class sub-folders") }
            let needed = found + (condDropProb > 0 ? 1 : 0)
            guard n >= needed else {
                throw TrainingError("the UNet has \(n) class embeddings; \(found) classes\(condDropProb > 0 ? " plus the null class for cond_drop_prob" : "") need \(needed)")
            }
            if condDropProb > 0 { nullClass = n - 1 }   // CompVis ClassEmbedder: the last class is the unconditional one
        case .text:
            guard classEmbeds == nil, model.classTimestepEmbedding == nil else {
                throw TrainingError("conditioning is \"text\" but the UNet also has a class embedding")
            }
            let conditioner = try makeTextConditioner(crossAttentionDim: model.config.crossAttentionDim?.first)
            text = conditioner
            if let missing = dataset.files.first(where: { !FileManager.default.fileExists(atPath: $0.url.deletingPathExtension().appendingPathExtension("txt").path) }) {
                throw TrainingError("conditioning is \"text\" but \(missing.url.path) has no caption (.txt beside it)")
            }
            // The empty-prompt embedding; recomputed every step (with its gradient) when the encoder is trained.
            if condDropProb > 0 && !conditioner.trainable { nullText = try conditioner.encode([""]) }
            textConditioning = { batch in
                guard let captions = batch.captions else { throw TrainingError("a batch lacks captions") }
                return .text(try conditioner.encode(captions))
            }
        }
        let loss = try DiffusionLoss(schedule: noiseSchedule(), parameterization: parameterization, lossType: lossType,
                                     condDropProb: condDropProb, nullClass: nullClass, nullText: nullText)
        var options = try trainerOptions()
        if scaleFactor == nil && !scaleByStd { options.scaleFactor = defaultScale }
        let extra: [(prefix: String, module: Module)] = text.map { $0.trainable ? [("text_encoder.", $0.model)] : [] } ?? []
        var cache: LatentCache?
        if cacheLatents {
            if !communicator.isRoot { try communicator.barrier() }
            cache = try LatentCache.loadOrBuild(dataset: dataset, encoder: encoder, runDir: runDir, batchSize: batchSize, log: log)
            if communicator.isRoot { try communicator.barrier() }
        }
        let trainer = try Trainer(model: model, loss: loss, encoder: encoder,
                                  dataset: try cache.map { try CachedLatentDataset(cache: $0, source: dataset) } ?? dataset,
                                  options: options, runDir: runDir, extraModules: extra, communicator: communicator)
        if conditioning == .none { trainer.makeConditioning = { _ in .none } }
        if let textConditioning { trainer.makeConditioning = textConditioning }
        trainer.textConditioner = text
        if let text, text.trainable, condDropProb > 0 { trainer.nullTextEmbedding = { try text.encode([""]) } }
        // Pixel space: a DDIMPipeline folder for unconditional / class-conditional runs that sample without rescaling;
        // a pixel-space text model has no diffusers pipeline (unet/ only).
        let pixelExportable = conditioning != .text && !scaleByStd && (scaleFactor ?? 1) == 1
        if firstStageFolder != nil || pixelExportable {
            trainer.pipelineExport = PipelineExportSpec(firstStageFolder: firstStageFolder,
                                                    firstStageClass: firstStageFolder == nil ? nil : encoder.isVQ ? "VQModel" : "AutoencoderKL",
                                                    schedulerConfig: try samplingSchedulerConfig(), sampleSize: imageSize / downsampling)
        }
        return trainer
    }

    /// The folder holding the first stage's config.json: `url` itself, else its vae/ or vqvae/ (a pipeline folder).
    static func firstStageComponentFolder(_ url: URL) -> URL {
        for dir in [url, url.appendingPathComponent("vae"), url.appendingPathComponent("vqvae")]
        where FileManager.default.fileExists(atPath: dir.appendingPathComponent("config.json").path) { return dir }
        return url
    }
}

extension LatentEncoder {
    var isVQ: Bool {
        if case .vq = self { return true }
        return false
    }
}
