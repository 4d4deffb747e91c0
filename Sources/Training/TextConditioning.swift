// Text conditioning for `ldm train ldm`: a CLIP text encoder (transformers CLIPTextModel) with its CLIP BPE tokenizer,
// either frozen (CompVis FrozenCLIPEmbedder, cond_stage_trainable: false) or trained with the UNet (CompVis
// cond_stage_trainable: true, as LDM's text2img BERTEmbedder is trained from scratch; here with a CLIP text
// transformer configured inline by `text_encoder_config` and initialised as transformers' CLIPPreTrainedModel).
import Checkpoints
import Conditioning
import Foundation
import NeuralNetwork
import TensorCore
import Tokenizers

/// Captions -> encoder_hidden_states (last_hidden_state), tokens padded / truncated to the encoder's length.
public final class TextConditioner {
    public let model: CLIPTextModel
    public let tokenizer: CLIPTokenizer
    /// The `tokenizer` config value: a folder path or `LDMTrainConfig.bundledCLIPTokenizer`.
    public let tokenizerSource: String
    /// The pretrained component folder the encoder came from (nil when built from text_encoder_config).
    public let sourceFolder: URL?
    /// Whether gradients flow into the encoder (its parameters are then in the optimizer).
    public let trainable: Bool
    /// min(tokenizer model_max_length, max_position_embeddings), as the pipelines' encode_prompt.
    public let length: Int

    public init(model: CLIPTextModel, tokenizer: CLIPTokenizer, tokenizerSource: String, sourceFolder: URL?, trainable: Bool) throws {
        let vocab = model.config.vocabSize
        if let top = tokenizer.vocabulary.values.max(), top >= vocab {
            throw TrainingError("the tokenizer (\(tokenizerSource)) has ids up to \(top) but the text encoder's vocab_size is \(vocab)")
        }
        self.model = model
        self.tokenizer = tokenizer
        self.tokenizerSource = tokenizerSource
        self.sourceFolder = sourceFolder
        self.trainable = trainable
        length = min(tokenizer.modelMaxLength, model.config.maxPositionEmbeddings)
    }

    /// CompVis get_learned_conditioning: recorded for autograd when trainable (and GradMode is on), never otherwise.
    public func encode(_ captions: [String]) throws -> Tensor {
        guard !captions.isEmpty else { throw TrainingError("no captions to encode") }
        let ids = captions.map { tokenizer($0, maxLength: length) }
        return trainable ? try model.encode(ids) : try GradMode.noGrad { try model.encode(ids) }
    }
}

extension LDMTrainConfig {
    /// The CLIPTextConfig of `text_encoder_config`; refuses keys whose values this model does not implement.
    func textEncoderCLIPConfig(_ dict: [String: Any]) throws -> CLIPTextConfig {
        for key in ["dropout", "attention_dropout"] {
            if let v = dict[key] as? NSNumber, v.doubleValue != 0 { throw TrainingError("\(key) \(v) is not supported (only 0)") }
        }
        if let arch = dict["architectures"] as? [String], let a = arch.first, a != "CLIPTextModel" {
            throw TrainingError("architectures \(arch) is not CLIPTextModel")
        }
        for key in ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "max_position_embeddings"] {
            guard dict[key] != nil else { throw TrainingError("\(key) is missing") }
        }
        return try CLIPTextConfig.decode(JSONSerialization.data(withJSONObject: dict))
    }

    /// transformers' `initializer_factor` of the inline config (default 1).
    var textEncoderInitializerFactor: Float {
        (textEncoderConfig?["initializer_factor"] as? NSNumber).map { $0.floatValue } ?? 1
    }

    /// The tokenizer: a CLIP tokenizer folder, or the shipped openai CLIP vocabulary (pad "<|endoftext|>" as SD 1.x).
    public func makeTokenizer(modelMaxLength: Int) throws -> CLIPTokenizer {
        guard let tokenizer else { throw TrainingError("conditioning \"text\" needs a tokenizer") }
        if tokenizer == Self.bundledCLIPTokenizer { return try CLIPTokenizer.openCLIPDefault(modelMaxLength: modelMaxLength) }
        return try CLIPTokenizer(folder: URL(fileURLWithPath: tokenizer))
    }

    /// The text conditioning of this config: a pretrained folder (frozen, or fine-tuned with cond_stage_trainable) or
    /// a new encoder from `text_encoder_config` (transformers' initialisation, drawn from `seed`).
    public func makeTextConditioner(crossAttentionDim: Int?) throws -> TextConditioner {
        let model: CLIPTextModel
        var folder: URL?
        if let inline = textEncoderConfig {
            model = try CLIPTextModel(config: textEncoderCLIPConfig(inline))
            initializeCLIPTextModel(model, factor: textEncoderInitializerFactor, generator: TorchGenerator(seed: seed &+ 1))
        } else if let textEncoder {
            guard let component = try DiffusersFolder(url: URL(fileURLWithPath: textEncoder)).components.first else {
                throw TrainingError("\(textEncoder): no text encoder component")
            }
            model = try CLIPTextModel(pretrained: component)
            folder = component.folder
        } else {
            throw TrainingError("conditioning \"text\" needs text_encoder or text_encoder_config")
        }
        guard model.config.hiddenSize == crossAttentionDim else {
            throw TrainingError("text encoder hidden size \(model.config.hiddenSize) does not match the UNet cross_attention_dim \(crossAttentionDim.map(String.init) ?? "none")")
        }
        let tok = try makeTokenizer(modelMaxLength: model.config.maxPositionEmbeddings)
        return try TextConditioner(model: model, tokenizer: tok, tokenizerSource: tokenizer ?? "", sourceFolder: folder,
                                   trainable: condStageTrainable)
    }

    /// The text encoder as a function (frozen use, e.g. sample grids of a frozen encoder).
    public func textEncoderFunction(crossAttentionDim: Int?) throws -> ([String]) throws -> Tensor {
        let c = try makeTextConditioner(crossAttentionDim: crossAttentionDim)
        return { captions in try GradMode.noGrad { try c.encode(captions) } }
    }
}

/// transformers CLIPPreTrainedModel._init_weights for a CLIPTextModel (factor = initializer_factor): token and position
/// embeddings N(0, 0.02 f); q/k/v N(0, d^-0.5 (2 L)^-0.5 f), out_proj N(0, d^-0.5 f); fc1 N(0, (2 d)^-0.5 f),
/// fc2 N(0, d^-0.5 (2 L)^-0.5 f); biases 0, LayerNorms weight 1 / bias 0. Drawn in parameter order from `generator`.
public func initializeCLIPTextModel(_ model: CLIPTextModel, factor: Float = 1, generator: TorchGenerator) {
    let c = model.config
    let d = Float(c.hiddenSize), layers = Float(2 * c.numHiddenLayers)
    let inStd = 1 / d.squareRoot() / layers.squareRoot() * factor, outStd = 1 / d.squareRoot() * factor
    let fcStd = 1 / (2 * d).squareRoot() * factor
    for (name, p) in model.namedParameters {
        let std: Float?
        if name.hasSuffix("embedding.weight") { std = 0.02 * factor }
        else if name.hasSuffix("_proj.weight") { std = name.hasSuffix("out_proj.weight") ? outStd : inStd }
        else if name.hasSuffix("fc1.weight") { std = fcStd }
        else if name.hasSuffix("fc2.weight") { std = inStd }
        else { std = nil }
        let value: Tensor
        if let std { value = Tensor.randn(p.shape, generator: generator) * std }
        else if name.contains("layer_norm") && name.hasSuffix(".weight") { value = Tensor.ones(p.shape) }
        else { value = Tensor(zeros: p.shape) }
        GradMode.noGrad { p.assign(value) }
    }
}
