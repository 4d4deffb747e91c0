import Checkpoints
import Foundation
import NeuralNetwork
import TensorCore

// Matches transformers models/clip/modeling_clip.py `CLIPTextModel` (CLIPTextEmbeddings, CLIPEncoderLayer with
// pre-LayerNorm and a causal mask, CLIPMLP, final_layer_norm, pooled output at the EOS token) with the config of
// configuration_clip.py `CLIPTextConfig`. Parameter names are the Hub / transformers 4.x state_dict names
// ("text_model.embeddings.token_embedding.weight", ...); `normalizedKeys` also accepts transformers 5.x names
// (no "text_model." prefix).

public struct CLIPTextConfig: Codable, Sendable, Equatable {
    public var vocabSize = 49408
    public var hiddenSize = 512
    public var intermediateSize = 2048
    public var numHiddenLayers = 12
    public var numAttentionHeads = 8
    public var maxPositionEmbeddings = 77
    public var hiddenAct = "quick_gelu"
    public var layerNormEps: Float = 1e-5
    public var bosTokenID = 49406
    public var eosTokenID = 49407
    public var padTokenID = 1

    enum CodingKeys: String, CodingKey {
        case vocabSize = "vocab_size", hiddenSize = "hidden_size", intermediateSize = "intermediate_size"
        case numHiddenLayers = "num_hidden_layers", numAttentionHeads = "num_attention_heads"
        case maxPositionEmbeddings = "max_position_embeddings", hiddenAct = "hidden_act", layerNormEps = "layer_norm_eps"
        case bosTokenID = "bos_token_id", eosTokenID = "eos_token_id", padTokenID = "pad_token_id"
    }
    private enum Outer: String, CodingKey { case textConfig = "text_config" }

    public init() {}

    /// Decodes a CLIPTextModel config.json (or the `text_config` of a CLIPModel config); absent keys keep defaults.
    public init(from decoder: Decoder) throws {
        if let outer = try? decoder.container(keyedBy: Outer.self), outer.contains(.textConfig) {
            self = try outer.decode(CLIPTextConfig.self, forKey: .textConfig)
            return
        }
        let c = try decoder.container(keyedBy: CodingKeys.self)
        vocabSize = try c.decode(.vocabSize, default: vocabSize)
        hiddenSize = try c.decode(.hiddenSize, default: hiddenSize)
        intermediateSize = try c.decode(.intermediateSize, default: intermediateSize)
        numHiddenLayers = try c.decode(.numHiddenLayers, default: numHiddenLayers)
        numAttentionHeads = try c.decode(.numAttentionHeads, default: numAttentionHeads)
        maxPositionEmbeddings = try c.decode(.maxPositionEmbeddings, default: maxPositionEmbeddings)
        hiddenAct = try c.decode(.hiddenAct, default: hiddenAct)
        layerNormEps = try c.decode(.layerNormEps, default: layerNormEps)
        bosTokenID = try c.decode(.bosTokenID, default: bosTokenID)
        eosTokenID = try c.decode(.eosTokenID, default: eosTokenID)
        padTokenID = try c.decode(.padTokenID, default: padTokenID)
        try validate()
    }

    public static func decode(_ data: Data) throws -> CLIPTextConfig {
        do { return try JSONDecoder().decode(CLIPTextConfig.self, from: data) } catch let e as ConditioningError { throw e } catch {
            throw ConditioningError("CLIP text config: cannot decode config.json: \(error)")
        }
    }

    public func validate() throws {
        guard vocabSize > 0, hiddenSize > 0, intermediateSize > 0, numHiddenLayers > 0, maxPositionEmbeddings > 0,
              numAttentionHeads > 0, hiddenSize % numAttentionHeads == 0 else {
            throw ConditioningError("CLIP text config: sizes must be positive and hidden_size \(hiddenSize) divisible by num_attention_heads \(numAttentionHeads)")
        }
        guard ["quick_gelu", "gelu", "gelu_new", "gelu_pytorch_tanh"].contains(hiddenAct) else {
            throw ConditioningError("CLIP text config: unsupported hidden_act \(hiddenAct)")
        }
    }
}

/// CLIPAttention + CLIPMLP inside one pre-LN encoder layer.
public final class CLIPEncoderLayer: Module {
    public let layerNorm1: LayerNorm, qProj: Linear, kProj: Linear, vProj: Linear, outProj: Linear
    public let layerNorm2: LayerNorm, fc1: Linear, fc2: Linear
    let heads: Int, act: String

    init(_ c: CLIPTextConfig) {
        let d = c.hiddenSize
        heads = c.numAttentionHeads
        act = c.hiddenAct
        layerNorm1 = LayerNorm(d, eps: c.layerNormEps)
        layerNorm2 = LayerNorm(d, eps: c.layerNormEps)
        qProj = Linear(d, d)
        kProj = Linear(d, d)
        vProj = Linear(d, d)
        outProj = Linear(d, d)
        fc1 = Linear(d, c.intermediateSize)
        fc2 = Linear(c.intermediateSize, d)
    }

    func activation(_ x: Tensor) -> Tensor {
        switch act {
        case "quick_gelu": return x.quickGELU()
        case "gelu": return x.gelu()
        default: return x.gelu(.tanh)
        }
    }

    func callAsFunction(_ x: Tensor) -> Tensor {
        let b = x.shape[0], l = x.shape[1], d = x.shape[2], hd = d / heads
        let h = layerNorm1(x)
        let split = { (t: Tensor) in t.reshaped([b, l, self.heads, hd]).permuted([0, 2, 1, 3]) }
        let o = scaledDotProductAttention(split(qProj(h)), split(kProj(h)), split(vProj(h)), causal: true)
        let y = outProj(o.permuted([0, 2, 1, 3]).reshaped([b, l, d])) + x
        return fc2(activation(fc1(layerNorm2(y)))) + y
    }

    public var namedParameters: [(String, Tensor)] {
        scoped("self_attn.k_proj", kProj) + scoped("self_attn.v_proj", vProj) + scoped("self_attn.q_proj", qProj)
            + scoped("self_attn.out_proj", outProj) + scoped("layer_norm1", layerNorm1) + scoped("mlp.fc1", fc1)
            + scoped("mlp.fc2", fc2) + scoped("layer_norm2", layerNorm2)
    }
}

public final class CLIPTextModel: Module {
    public let config: CLIPTextConfig
    public let tokenEmbedding: Embedding, positionEmbedding: Embedding
    public let layers: [CLIPEncoderLayer]
    public let finalLayerNorm: LayerNorm

    public struct Output {
        /// final_layer_norm(last layer), (B, L, D).
        public var lastHiddenState: Tensor
        /// lastHiddenState at each sequence's EOS token (or at the largest id for the legacy eos_token_id 2), (B, D).
        public var pooledOutput: Tensor
    }

    public init(config: CLIPTextConfig) throws {
        try config.validate()
        self.config = config
        tokenEmbedding = Embedding(config.vocabSize, config.hiddenSize)
        positionEmbedding = Embedding(config.maxPositionEmbeddings, config.hiddenSize)
        layers = (0..<config.numHiddenLayers).map { _ in CLIPEncoderLayer(config) }
        finalLayerNorm = LayerNorm(config.hiddenSize, eps: config.layerNormEps)
    }

    public convenience init(configData: Data) throws { try self.init(config: CLIPTextConfig.decode(configData)) }

    /// Hidden state after `layerCount` encoder layers (the embeddings when 0), without the final layer norm.
    func hiddenState(_ ids: [[Int]], layerCount: Int) throws -> Tensor {
        let b = ids.count, l = ids.first?.count ?? 0
        guard b > 0, l > 0, ids.allSatisfy({ $0.count == l }) else { throw ConditioningError("CLIP: input ids must be a non-empty rectangle") }
        guard l <= config.maxPositionEmbeddings else { throw ConditioningError("CLIP: \(l) tokens exceed max_position_embeddings \(config.maxPositionEmbeddings)") }
        let flat = ids.flatMap { $0 }
        guard flat.allSatisfy({ $0 >= 0 && $0 < config.vocabSize }) else { throw ConditioningError("CLIP: token id outside vocabulary of \(config.vocabSize)") }
        var h = tokenEmbedding(flat, shape: [b, l]) + positionEmbedding(Array(0..<l), shape: [1, l])
        for layer in layers.prefix(layerCount) { h = layer(h) }
        return h
    }

    /// last_hidden_state and pooler_output of transformers' CLIPTextModel for token ids (B, L).
    public func callAsFunction(inputIDs ids: [[Int]]) throws -> Output {
        let last = finalLayerNorm(try hiddenState(ids, layerCount: layers.count))
        return Output(lastHiddenState: last, pooledOutput: pool(last, ids: ids))
    }

    /// `last` (B, L, D) at each sequence's EOS token (or at the largest id for the legacy eos_token_id 2): (B, D).
    func pool(_ last: Tensor, ids: [[Int]]) -> Tensor {
        let d = config.hiddenSize
        let positions = ids.map { row -> Int in
            if config.eosTokenID == 2 { return row.indices.max { row[$0] < row[$1] || (row[$0] == row[$1] && $0 > $1) } ?? 0 }
            return row.firstIndex(of: config.eosTokenID) ?? 0
        }
        return concat(positions.enumerated().map { b, p in last.narrow(0, b, 1).narrow(1, p, 1).reshaped([1, d]) }, axis: 0)
    }

    /// One pass for SDXL's encode_prompt: hidden_states[-(k + 1)] (no final layer norm; k = 1 is the penultimate
    /// layer SDXL uses, k = clip_skip + 1) and pooler_output (final layer norm at the EOS token).
    public func hiddenStateAndPooled(_ ids: [[Int]], fromEnd k: Int) throws -> (hidden: Tensor, pooled: Tensor) {
        guard k >= 0, k <= layers.count else { throw ConditioningError("CLIP: hidden state \(k) from the end outside 0...\(layers.count)") }
        var h = try hiddenState(ids, layerCount: layers.count - k)
        let hidden = h
        for layer in layers.suffix(k) { h = layer(h) }
        return (hidden, pool(finalLayerNorm(h), ids: ids))
    }

    /// The conditioning a diffusion pipeline uses: `clipSkip` 0 is last_hidden_state; k > 0 applies the final layer
    /// norm to hidden_states[-(k + 1)] as diffusers' encode_prompt(clip_skip=k) does (k = 1: SD 2.x's penultimate layer).
    public func encode(_ ids: [[Int]], clipSkip: Int = 0) throws -> Tensor {
        guard clipSkip >= 0, clipSkip < layers.count else { throw ConditioningError("CLIP: clip skip \(clipSkip) outside 0..<\(layers.count)") }
        return finalLayerNorm(try hiddenState(ids, layerCount: layers.count - clipSkip))
    }

    public var namedParameters: [(String, Tensor)] {
        scoped("text_model.embeddings.token_embedding", tokenEmbedding) + scoped("text_model.embeddings.position_embedding", positionEmbedding)
            + scoped("text_model.encoder.layers", layers) + scoped("text_model.final_layer_norm", finalLayerNorm)
    }

    /// Renames transformers 5.x keys (no "text_model.") to our names (CLIPTextKeys.canonical); other keys pass
    /// unchanged. CompVis' FrozenCLIPEmbedder names: CompVis.CLIPTable.
    public static func normalizedKeys(_ records: [String: TensorRecord]) -> [String: TensorRecord] {
        var out: [String: TensorRecord] = [:]
        for (key, r) in records { out[CLIPTextKeys.canonical(key)] = r }
        return out
    }

    /// Loads weights in any of the layouts `normalizedKeys` accepts.
    @discardableResult
    public func loadWeights(_ records: [String: TensorRecord]) throws -> LoadReport {
        try load(Self.normalizedKeys(records), component: "CLIP text model")
    }
}
