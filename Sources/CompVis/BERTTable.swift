// The LDM-BERT text encoder's rename table: CompVis BERTEmbedder (ldm/modules/encoders/modules.py, ldm/modules/
// x_transformer.py TransformerWrapper) <-> diffusers LDMBertModel, as diffusers/pipelines/stable_diffusion/
// convert_from_ckpt.py convert_ldm_bert_checkpoint copies it; used by `ldm convert` and by loading a BERTEmbedder
// checkpoint into LDMBertModel.
import Checkpoints
import Conditioning
import Foundation

/// CompVis BERTEmbedder (ldm/modules/encoders/modules.py) = x_transformer.py TransformerWrapper(num_tokens=vocab_size,
/// max_seq_len, attn_layers=Encoder(dim=n_embed, depth=n_layer)) under `cond_stage_model.transformer.` <->
/// diffusers LDMBertModel (`bert/`), as convert_ldm_bert_checkpoint copies it. AttentionLayers builds
/// layer_types ('a', 'f') * depth, each `layers.N` a ModuleList [norm, block, Residual()] (pre_norm: norm -> block ->
/// + residual), so Encoder layer i is CompVis layers 2i (LayerNorm + Attention, no q/k/v bias) and 2i+1 (LayerNorm +
/// FeedForward: net.0 = Sequential(Linear, nn.GELU()) since glu=False, net.1 Dropout, net.2 Linear).
/// TransformerWrapper: token_emb, pos_emb.emb (AbsolutePositionalEmbedding, added unscaled), final `norm`; `to_logits`
/// exists in every checkpoint but BERTEmbedder calls the wrapper with return_embeddings=True, which skips it
/// (`unusedByEmbedder`): it is still carried (diffusers' LDMBertModel has it too) but loading does not require it.
public struct BERTLayout: Equatable, Sendable {
    public var layers: Int
    public static let compvisPrefix = "cond_stage_model.transformer."
    /// Tensors BERTEmbedder never reads (diffusers names; the same under CompVis names).
    public static let unusedByEmbedder: Set<String> = ["to_logits.weight", "to_logits.bias"]

    public init(layers: Int) { self.layers = layers }

    public var rules: [LayoutRule] {
        var r = [LayoutRule("token_emb", "model.embed_tokens"), LayoutRule("pos_emb.emb", "model.embed_positions"),
                 LayoutRule("norm", "model.layer_norm"), LayoutRule("to_logits", "to_logits")]
        for i in 0..<layers {
            let a = "attn_layers.layers.\(2 * i)", f = "attn_layers.layers.\(2 * i + 1)", d = "model.layers.\(i)"
            r += [LayoutRule(a + ".0", d + ".self_attn_layer_norm"), LayoutRule(a + ".1", d + ".self_attn", .bertAttention),
                  LayoutRule(f + ".0", d + ".final_layer_norm"), LayoutRule(f + ".1.net.0.0", d + ".fc1"),
                  LayoutRule(f + ".1.net.2", d + ".fc2")]
        }
        return r
    }

    /// Every tensor of LDMBertModel (diffusers names): a mapped name outside this set has no counterpart (e.g. GLU
    /// feed-forwards, memory key/values, ReZero gains of x-transformers options BERTEmbedder does not use).
    public var diffusersKeys: Set<String> {
        var s: Set<String> = ["model.embed_tokens.weight", "model.embed_positions.weight", "model.layer_norm.weight",
                              "model.layer_norm.bias", "to_logits.weight", "to_logits.bias"]
        for i in 0..<layers {
            let d = "model.layers.\(i)."
            for k in ["self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.out_proj.weight",
                      "self_attn.out_proj.bias", "self_attn_layer_norm.weight", "self_attn_layer_norm.bias", "fc1.weight", "fc1.bias",
                      "fc2.weight", "fc2.bias", "final_layer_norm.weight", "final_layer_norm.bias"] { s.insert(d + k) }
        }
        return s
    }

    /// Whether CompVis names (without `compvisPrefix`) are an x-transformers TransformerWrapper rather than a CLIP model.
    public static func isBERTEmbedder(compvis keys: [String]) -> Bool { keys.contains("token_emb.weight") }

    /// From CompVis names without `compvisPrefix`: attention sub-layers at even indices, feed-forwards at odd ones.
    public static func detect(compvis keys: [String]) throws -> BERTLayout {
        let n = indices(keys, "attn_layers.layers.")
        guard !n.isEmpty, n.count % 2 == 0, n == Set(0..<n.count) else {
            throw CheckpointError("BERTEmbedder: attn_layers.layers.* are not an ('a', 'f') * depth Encoder (\(n.count) sub-layers)")
        }
        for i in stride(from: 0, to: n.count, by: 2) where !keys.contains("attn_layers.layers.\(i).1.to_q.weight") {
            throw CheckpointError("BERTEmbedder: attn_layers.layers.\(i) is not an attention sub-layer (no to_q)")
        }
        return BERTLayout(layers: n.count / 2)
    }

    /// From diffusers names (without "bert.").
    public static func detect(diffusers keys: [String]) throws -> BERTLayout {
        let n = indices(keys, "model.layers.")
        guard !n.isEmpty, n == Set(0..<n.count) else { throw CheckpointError("LDMBertModel: no model.layers.* tensors") }
        return BERTLayout(layers: n.count)
    }

    public var mapping: ComponentMapping { ComponentMapping(compvisPrefix: Self.compvisPrefix, component: "bert", rules: rules) }

    /// CompVis tensors (full names) -> LDMBertModel names; names without a counterpart are returned in `unmapped`.
    public static func toDiffusers(_ tensors: [String: TensorRecord]) throws -> (layout: BERTLayout, mapped: [MappedTensor], unmapped: [String]) {
        let names = tensors.keys.filter { $0.hasPrefix(compvisPrefix) }.sorted()
        let layout = try detect(compvis: names.map { String($0.dropFirst(compvisPrefix.count)) })
        let m = layout.mapping, keys = layout.diffusersKeys
        var out: [MappedTensor] = [], unmapped: [String] = []
        for name in names {
            guard let r = tensors[name], let (k, s) = m.toDiffusers(String(name.dropFirst(compvisPrefix.count)), shape: r.shape),
                  keys.contains(k) else {
                      unmapped.append(name)
                      continue
                  }
            out.append(MappedTensor(name: k, shape: s, source: r))
        }
        return (layout, out, unmapped)
    }
}

extension LDMBertModel {
    /// LDMBertModel from a CompVis checkpoint's `cond_stage_model.transformer.*` tensors (full names; other keys are
    /// ignored). Strict: every LDMBertModel weight but the unused `to_logits` must be present with its shape, and
    /// every BERTEmbedder tensor must have a counterpart (x-transformers options BERTEmbedder never sets, such as GLU
    /// feed-forwards, memory key/values or ReZero gains, would change the forward pass).
    public convenience init(config: LDMBertConfig, bertEmbedder tensors: [String: TensorRecord]) throws {
        self.init(config: config)
        let (_, mapped, unmapped) = try BERTLayout.toDiffusers(tensors)
        guard unmapped.isEmpty else {
            throw ConditioningError("BERTEmbedder: \(unmapped.count) tensors have no LDM-BERT counterpart: "
                                    + unmapped.prefix(8).joined(separator: ", ") + (unmapped.count > 8 ? ", ..." : ""))
        }
        var records: [String: TensorRecord] = [:]
        for m in mapped { records[m.name] = m.source }
        let report = try load(records, component: "cond_stage_model (BERTEmbedder)", optional: BERTLayout.unusedByEmbedder)
        guard report.unexpected.isEmpty else {
            throw ConditioningError("BERTEmbedder: tensors for layers the YAML does not declare (n_layer \(config.encoderLayers)): "
                                    + report.unexpected.prefix(8).joined(separator: ", "))
        }
    }
}
