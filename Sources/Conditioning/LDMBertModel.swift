import Foundation
import NeuralNetwork
import TensorCore

// Matches diffusers pipelines/latent_diffusion/pipeline_latent_diffusion.py `LDMBertModel` / `LDMBertEncoder` /
// `LDMBertEncoderLayer` / `LDMBertAttention` with `LDMBertConfig`: the text encoder of CompVis' LDM text-to-image
// model (BERT tokenizer ids; token + learned position embeddings, pre-LN encoder layers without a mask, final
// LayerNorm). LDMBertPipeline uses output [0], the last hidden state; `to_logits` is loaded but unused there.

public struct LDMBertConfig: Codable, Sendable, Equatable {
    public var vocabSize = 30522
    public var maxPositionEmbeddings = 77
    public var encoderLayers = 32
    public var encoderFFNDim = 5120
    public var encoderAttentionHeads = 8
    public var headDim = 64
    public var dModel = 1280
    public var activationFunction = "gelu"

    enum CodingKeys: String, CodingKey {
        case vocabSize = "vocab_size", maxPositionEmbeddings = "max_position_embeddings", encoderLayers = "encoder_layers"
        case encoderFFNDim = "encoder_ffn_dim", encoderAttentionHeads = "encoder_attention_heads", headDim = "head_dim"
        case dModel = "d_model", activationFunction = "activation_function"
    }

    public init() {}

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        vocabSize = try c.decode(.vocabSize, default: vocabSize)
        maxPositionEmbeddings = try c.decode(.maxPositionEmbeddings, default: maxPositionEmbeddings)
        encoderLayers = try c.decode(.encoderLayers, default: encoderLayers)
        encoderFFNDim = try c.decode(.encoderFFNDim, default: encoderFFNDim)
        encoderAttentionHeads = try c.decode(.encoderAttentionHeads, default: encoderAttentionHeads)
        headDim = try c.decode(.headDim, default: headDim)
        dModel = try c.decode(.dModel, default: dModel)
        activationFunction = try c.decode(.activationFunction, default: activationFunction)
        guard [vocabSize, maxPositionEmbeddings, encoderLayers, encoderFFNDim, encoderAttentionHeads, headDim, dModel].allSatisfy({ $0 > 0 }) else {
            throw ConditioningError("LDMBert config: sizes must be positive")
        }
        guard ["gelu", "gelu_new", "gelu_pytorch_tanh", "quick_gelu", "relu"].contains(activationFunction) else {
            throw ConditioningError("LDMBert config: unsupported activation_function \(activationFunction)")
        }
    }

    public static func decode(_ data: Data) throws -> LDMBertConfig {
        do { return try JSONDecoder().decode(LDMBertConfig.self, from: data) } catch let e as ConditioningError { throw e } catch {
            throw ConditioningError("LDMBert config: cannot decode config.json: \(error)")
        }
    }
}

public final class LDMBertEncoderLayer: Module {
    public let selfAttnLayerNorm: LayerNorm, qProj: Linear, kProj: Linear, vProj: Linear, outProj: Linear
    public let finalLayerNorm: LayerNorm, fc1: Linear, fc2: Linear
    let heads: Int, headDim: Int, act: String

    init(_ c: LDMBertConfig) {
        let inner = c.encoderAttentionHeads * c.headDim
        heads = c.encoderAttentionHeads
        headDim = c.headDim
        act = c.activationFunction
        selfAttnLayerNorm = LayerNorm(c.dModel)
        finalLayerNorm = LayerNorm(c.dModel)
        qProj = Linear(c.dModel, inner, bias: false)
        kProj = Linear(c.dModel, inner, bias: false)
        vProj = Linear(c.dModel, inner, bias: false)
        outProj = Linear(inner, c.dModel)
        fc1 = Linear(c.dModel, c.encoderFFNDim)
        fc2 = Linear(c.encoderFFNDim, c.dModel)
    }

    func callAsFunction(_ x: Tensor) -> Tensor {
        let b = x.shape[0], l = x.shape[1]
        let h = selfAttnLayerNorm(x)
        let split = { (t: Tensor) in t.reshaped([b, l, self.heads, self.headDim]).permuted([0, 2, 1, 3]) }
        let o = scaledDotProductAttention(split(qProj(h)), split(kProj(h)), split(vProj(h)))
        let y = outProj(o.permuted([0, 2, 1, 3]).reshaped([b, l, heads * headDim])) + x
        let f = fc1(finalLayerNorm(y))
        let a: Tensor
        switch act {
        case "gelu": a = f.gelu()
        case "quick_gelu": a = f.quickGELU()
        case "relu": a = f.relu()
        default: a = f.gelu(.tanh)
        }
        return fc2(a) + y
    }

    public var namedParameters: [(String, Tensor)] {
        scoped("self_attn.k_proj", kProj) + scoped("self_attn.v_proj", vProj) + scoped("self_attn.q_proj", qProj)
            + scoped("self_attn.out_proj", outProj) + scoped("self_attn_layer_norm", selfAttnLayerNorm)
            + scoped("fc1", fc1) + scoped("fc2", fc2) + scoped("final_layer_norm", finalLayerNorm)
    }
}

public final class LDMBertModel: Module {
    public let config: LDMBertConfig
    public let embedTokens: Embedding, embedPositions: Embedding
    public let layers: [LDMBertEncoderLayer]
    public let layerNorm: LayerNorm
    public let toLogits: Linear

    public init(config: LDMBertConfig) {
        self.config = config
        embedTokens = Embedding(config.vocabSize, config.dModel)
        embedPositions = Embedding(config.maxPositionEmbeddings, config.dModel)
        layers = (0..<config.encoderLayers).map { _ in LDMBertEncoderLayer(config) }
        layerNorm = LayerNorm(config.dModel)
        toLogits = Linear(config.dModel, config.vocabSize)
    }

    public convenience init(configData: Data) throws { self.init(config: try LDMBertConfig.decode(configData)) }

    /// Token ids (B, L) -> last hidden state (B, L, d_model).
    public func callAsFunction(inputIDs ids: [[Int]]) throws -> Tensor {
        let b = ids.count, l = ids.first?.count ?? 0
        guard b > 0, l > 0, ids.allSatisfy({ $0.count == l }) else { throw ConditioningError("LDMBert: input ids must be a non-empty rectangle") }
        guard l <= config.maxPositionEmbeddings else { throw ConditioningError("LDMBert: \(l) tokens exceed max_position_embeddings \(config.maxPositionEmbeddings)") }
        let flat = ids.flatMap { $0 }
        guard flat.allSatisfy({ $0 >= 0 && $0 < config.vocabSize }) else { throw ConditioningError("LDMBert: token id outside vocabulary of \(config.vocabSize)") }
        var h = embedTokens(flat, shape: [b, l]) + embedPositions(Array(0..<l), shape: [1, l])
        for layer in layers { h = layer(h) }
        return layerNorm(h)
    }

    public var namedParameters: [(String, Tensor)] {
        scoped("model.embed_tokens", embedTokens) + scoped("model.embed_positions", embedPositions) + scoped("model.layers", layers)
            + scoped("model.layer_norm", layerNorm) + scoped("to_logits", toLogits)
    }
}
