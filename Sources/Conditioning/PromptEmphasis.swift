import NeuralNetwork
import TensorCore
import Tokenizers

// Applying prompt emphasis as AUTOMATIC1111 stable-diffusion-webui modules/sd_emphasis.py `EmphasisOriginal`
// (after_transformers) and sd_hijack_clip.py `FrozenCLIPEmbedderWithCustomWordsBase.forward` do: every 77-token chunk
// of a `WeightedPrompt` is encoded on its own, its output scaled per token and rescaled to keep the original mean,
// and the chunks are concatenated along the token axis.

/// z (B, L, D) with one weight per token (B * L values): z * w, then (`normalize`, the web UI's emphasis "Original")
/// rescaled so that mean(z) is unchanged (the means are over all elements of the batch, as in the reference);
/// without `normalize` it is `EmphasisOriginalNoNorm` ("No norm").
/// The reference divides by the weighted mean unguarded: where that is 0 (hidden states of mean exactly 0, e.g. from
/// a final LayerNorm with zero bias, as in randomly initialised encoders) its ratio is 0/0 or x/0 and the whole
/// prompt becomes NaN/inf; there we keep the weighted states unrescaled.
public func applyEmphasis(_ z: Tensor, weights: [Float], normalize: Bool = true) throws -> Tensor {
    guard z.rank == 3, weights.count == z.shape[0] * z.shape[1] else {
        throw ConditioningError("emphasis: \(weights.count) weights for hidden states \(z.shape)")
    }
    let scaled = z * Tensor(weights, shape: [z.shape[0], z.shape[1], 1])
    guard normalize else { return scaled }
    let ratio = z.mean() / scaled.mean()
    guard let r = ratio.detach().toArray().first, r.isFinite else { return scaled }
    return scaled * ratio
}

extension CLIPTextModel {
    /// Encodes the chunks of `prompt` (each `chunkLength + 2` tokens) with `clipSkip` as `encode`, applies the
    /// emphasis weights (`normalize`: restoring the mean, see `applyEmphasis`), and concatenates the chunks:
    /// (1, chunks * tokens, hidden_size).
    public func encode(_ prompt: WeightedPrompt, clipSkip: Int = 0, emphasis: Bool = true, normalize: Bool = true) throws -> Tensor {
        guard !prompt.chunks.isEmpty, prompt.chunks.count == prompt.weights.count,
              zip(prompt.chunks, prompt.weights).allSatisfy({ $0.count == $1.count }) else {
            throw ConditioningError("emphasis: weighted prompt has mismatched chunks and weights")
        }
        let parts = try zip(prompt.chunks, prompt.weights).map { ids, w -> Tensor in
            let z = try encode([ids], clipSkip: clipSkip)
            return emphasis ? try applyEmphasis(z, weights: w, normalize: normalize) : z
        }
        return parts.count == 1 ? parts[0] : concat(parts, axis: 1)
    }
}
