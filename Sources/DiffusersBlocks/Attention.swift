// Follows diffusers src/diffusers/models/attention.py `BasicTransformerBlock` (norm_type "layer_norm") and
// `FeedForward` (with `GEGLU` of models/activations.py). CompVis: BasicTransformerBlock and FeedForward in
// ldm/modules/attention.py.
import NeuralNetwork
import TensorCore

/// FeedForward with GEGLU: net.0.proj = Linear(dim, inner * 2); hidden, gate = chunk(2); hidden * gelu(gate); net.2.
public final class FeedForward: Module {
    public let proj: Linear, out: Linear
    public init(dim: Int, mult: Int = 4) {
        proj = Linear(dim, dim * mult * 2)
        out = Linear(dim * mult, dim)
    }
    /// out(geglu(proj(x))) (+ residual, added in the output GEMM where Linear can). In native bf16 inference proj's
    /// product is rounded, GEGLU'd and rounded again in one pass into the bf16 tensor net.2 reads (`gegluToBFloat16`).
    public func callAsFunction(_ x: Tensor, adding residual: Tensor? = nil) -> Tensor {
        let hidden = proj(x, then: { $0.geglu() }, roundingThen: { $0.gegluToBFloat16() })
        return residual.map { out(hidden, adding: $0) } ?? out(hidden)
    }
    public var namedParameters: [(String, Tensor)] { scoped("net.0.proj", proj) + scoped("net.2", out) }
}

/// BasicTransformerBlock (norm_type "layer_norm"): self-attention, cross-attention to the context, GEGLU feed-forward,
/// each pre-normed with a LayerNorm (eps 1e-5) and added to the residual stream.
public final class BasicTransformerBlock: Module {
    public let norm1: LayerNorm, attn1: Attention, norm2: LayerNorm, attn2: Attention, norm3: LayerNorm, ff: FeedForward
    public init(dim: Int, heads: Int, dimHead: Int, crossAttentionDim: Int?) {
        norm1 = LayerNorm(dim)
        attn1 = Attention(queryDim: dim, heads: heads, dimHead: dimHead)
        norm2 = LayerNorm(dim)
        attn2 = Attention(queryDim: dim, crossAttentionDim: crossAttentionDim, heads: heads, dimHead: dimHead)
        norm3 = LayerNorm(dim)
        ff = FeedForward(dim: dim)
    }
    public func callAsFunction(_ x: Tensor, context: Tensor?) -> Tensor {
        // Each residual is added in its branch's output projection (Linear's `adding:`).
        var h = attn1(norm1(x), adding: x)
        h = attn2(norm2(h), context: context, adding: h)
        return ff(norm3(h), adding: h)
    }
    public var namedParameters: [(String, Tensor)] {
        scoped("norm1", norm1) + scoped("attn1", attn1) + scoped("norm2", norm2) + scoped("attn2", attn2)
            + scoped("norm3", norm3) + scoped("ff", ff)
    }
}
