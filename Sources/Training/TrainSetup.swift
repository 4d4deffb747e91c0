// Builds a Trainer from an LDMTrainConfig, as CompVis main.py instantiates LatentDiffusion (UNet, frozen first stage,
// optional class conditioning) and the data module, checking that the parts fit together before any step runs.
import Autoencoders
import Checkpoints
import Conditioning
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

    /// Everything wired and checked; `runDir` holds checkpoints, loss.jsonl and the exported unet/.
    public func makeTrainer(runDir: URL) throws -> Trainer {
        let model = try makeUNet()
        let encoder: LatentEncoder
        var latentChannels = 3, downsampling = 1, defaultScale: Float = 1
        if let firstStage {
            let (fs, _) = try FirstStageModel.load(folder: URL(fileURLWithPath: firstStage))
            switch fs {
            case .kl(let m):
                encoder = .kl(m); latentChannels = m.config.latentChannels; downsampling = m.downsamplingFactor
            case .vq(let m):
                encoder = .vq(m); latentChannels = m.config.embedDim; downsampling = m.downsamplingFactor
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
            let encode = try textEncoderFunction(crossAttentionDim: model.config.crossAttentionDim?.first)
            if let missing = dataset.files.first(where: { !FileManager.default.fileExists(atPath: $0.url.deletingPathExtension().appendingPathExtension("txt").path) }) {
                throw TrainingError("conditioning is \"text\" but \(missing.url.path) has no caption (.txt beside it)")
            }
            if condDropProb > 0 { nullText = try encode([""]) }   // the empty-prompt embedding
            textConditioning = { batch in
                guard let captions = batch.captions else { throw TrainingError("a batch lacks captions") }
                return .text(try encode(captions))
            }
        }
        let loss = try DiffusionLoss(schedule: noiseSchedule(), parameterization: parameterization, lossType: lossType,
                                     condDropProb: condDropProb, nullClass: nullClass, nullText: nullText)
        var options = try trainerOptions()
        if scaleFactor == nil && !scaleByStd { options.scaleFactor = defaultScale }
        let trainer = try Trainer(model: model, loss: loss, encoder: encoder, dataset: dataset, options: options, runDir: runDir)
        if conditioning == .none { trainer.makeConditioning = { _ in .none } }
        if let textConditioning { trainer.makeConditioning = textConditioning }
        return trainer
    }

    /// The frozen text encoder (CompVis FrozenCLIPEmbedder, cond_stage_trainable false): captions -> last_hidden_state,
    /// tokens padded / truncated to max_position_embeddings.
    public func textEncoderFunction(crossAttentionDim: Int?) throws -> ([String]) throws -> Tensor {
        guard let textEncoder, let tokenizer else { throw TrainingError("conditioning \"text\" needs text_encoder and tokenizer") }
        guard let component = try DiffusersFolder(url: URL(fileURLWithPath: textEncoder)).components.first else {
            throw TrainingError("\(textEncoder): no text encoder component")
        }
        let model = try CLIPTextModel(pretrained: component)
        let tok = try CLIPTokenizer(folder: URL(fileURLWithPath: tokenizer))
        guard model.config.hiddenSize == crossAttentionDim else {
            throw TrainingError("text encoder hidden size \(model.config.hiddenSize) does not match the UNet cross_attention_dim \(crossAttentionDim.map(String.init) ?? "none")")
        }
        let length = model.config.maxPositionEmbeddings, vocab = model.config.vocabSize
        return { captions in
            let ids = captions.map { tok($0, maxLength: length) }
            guard ids.allSatisfy({ $0.allSatisfy { $0 >= 0 && $0 < vocab } }) else {
                throw TrainingError("tokenizer \(tokenizer) produced ids outside the text encoder's vocabulary of \(vocab)")
            }
            return try GradMode.noGrad { try model.encode(ids) }
        }
    }
}
