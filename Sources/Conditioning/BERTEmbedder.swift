import Checkpoints
import Foundation
import NeuralNetwork

// CompVis' LDM-BERT text encoder as its own checkpoints store it: ldm/modules/encoders/modules.py `BERTEmbedder`
// (n_embed, n_layer, vocab_size=30522, max_seq_len=77) = ldm/modules/x_transformer.py TransformerWrapper(
// num_tokens=vocab_size, max_seq_len, attn_layers=Encoder(dim=n_embed, depth=n_layer)) under
// `cond_stage_model.transformer.`, called with return_embeddings=True. Its forward is diffusers' LDMBertModel's
// (token + unscaled absolute position embeddings, pre-norm layers: x + Attention(LN(x)), x + FF(LN(x)) with exact
// GELU, 8 heads of 64 without q/k/v bias, final LayerNorm), so it loads into LDMBertModel through the declarative
// rule table of CompVis' BERTLayout (CompVis/BERTTable.swift, as diffusers' convert_ldm_bert_checkpoint copies it).

extension LDMBertConfig {
    /// LDMBertConfig of a BERTEmbedder: x-transformers' Encoder defaults for what BERTEmbedder does not pass
    /// (heads 8, dim_head 64, FeedForward mult 4, glu False -> nn.GELU()).
    public static func bertEmbedder(nEmbed: Int, nLayer: Int, vocabSize: Int = 30522, maxSeqLen: Int = 77) throws -> LDMBertConfig {
        guard nEmbed > 0, nLayer > 0, vocabSize > 0, maxSeqLen > 0 else {
            throw ConditioningError("BERTEmbedder: n_embed, n_layer, vocab_size and max_seq_len must be positive")
        }
        var c = LDMBertConfig()
        c.dModel = nEmbed
        c.encoderLayers = nLayer
        c.encoderFFNDim = 4 * nEmbed
        c.vocabSize = vocabSize
        c.maxPositionEmbeddings = maxSeqLen
        c.encoderAttentionHeads = 8
        c.headDim = 64
        c.activationFunction = "gelu"
        return c
    }
}
