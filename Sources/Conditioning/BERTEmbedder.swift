import Checkpoints
import Foundation
import NeuralNetwork

// CompVis' LDM-BERT text encoder as its own checkpoints store it: ldm/modules/encoders/modules.py `BERTEmbedder`
// (n_embed, n_layer, vocab_size=30522, max_seq_len=77) = ldm/modules/x_transformer.py TransformerWrapper(
// num_tokens=vocab_size, max_seq_len, attn_layers=Encoder(dim=n_embed, depth=n_layer)) under
// `cond_stage_model.transformer.`, called with return_embeddings=True. Its forward is diffusers' LDMBertModel's
// (token + unscaled absolute position embeddings, pre-norm layers: x + Attention(LN(x)), x + FF(LN(x)) with exact
// GELU, 8 heads of 64 without q/k/v bias, final LayerNorm), so it loads into LDMBertModel through the declarative
// rule table of Checkpoints' BERTLayout (as diffusers' convert_ldm_bert_checkpoint copies it).

extension LDMBertConfig {
    /// LDMBertConfig of a BERTEmbedder: x-transformers' Encoder defaults for what BERTEmbedder does not pass
    /// (heads 8, dim_head 64, FeedForward mult 4, glu False -> nn.GELU()).
    public static func bertEmbedder(nEmbed: Int, nLayer: Int, vocabSize: Int = 30522, maxSeqLen: Int = 77) throws -> LDMBertConfig {
        guard nEmbed > 0, nLayer > 0, vocabSize > 0, maxSeqLen > 0 else {
            throw ConditioningError("BERTEmbedder: n_embed, n_layer, vocab_size and max_seq_len must be positive")
        }
        var c = LDMBertConfig()
        c.dModel = nEmbed; c.encoderLayers = nLayer; c.encoderFFNDim = 4 * nEmbed; c.vocabSize = vocabSize
        c.maxPositionEmbeddings = maxSeqLen; c.encoderAttentionHeads = 8; c.headDim = 64; c.activationFunction = "gelu"
        return c
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
