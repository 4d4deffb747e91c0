import NeuralNetwork
import TensorCore

// Matches diffusers models/attention_processor.py `Attention` (AttnProcessor2_0), models/attention.py
// (`BasicTransformerBlock`, `FeedForward`, `GEGLU` in activations.py) and
// models/transformers/transformer_2d.py `Transformer2DModel` (continuous input, conv or linear projections).

/// Multi-head attention: to_q / to_k / to_v / to_out.0. With `groupNorm` and `residualConnection` it is the legacy
/// `AttentionBlock` (diffusers `Attention(..., _from_deprecated_attn_block=True)`) used by AttnDownBlock2D and
/// UNetMidBlock2D on (B, C, H, W) inputs.
public final class Attention: Module {
    public let toQ: Linear, toK: Linear, toV: Linear, toOut: Linear
    public let groupNorm: GroupNorm?
    public let heads: Int, residualConnection: Bool, rescaleOutputFactor: Float

    public init(queryDim: Int, crossAttentionDim: Int? = nil, heads: Int, dimHead: Int, bias: Bool = false,
                normNumGroups: Int? = nil, eps: Float = 1e-5, residualConnection: Bool = false, rescaleOutputFactor: Float = 1) {
        let inner = heads * dimHead, kv = crossAttentionDim ?? queryDim
        self.heads = heads; self.residualConnection = residualConnection; self.rescaleOutputFactor = rescaleOutputFactor
        toQ = Linear(queryDim, inner, bias: bias); toK = Linear(kv, inner, bias: bias); toV = Linear(kv, inner, bias: bias)
        toOut = Linear(inner, queryDim)
        groupNorm = normNumGroups.map { GroupNorm(groups: $0, channels: queryDim, eps: eps) }
    }

    /// x (B, L, C), context (B, S, Ck) or nil for self-attention -> (B, L, C).
    public func callAsFunction(_ x: Tensor, context: Tensor? = nil) -> Tensor {
        let ctx = context ?? x
        let b = x.shape[0], l = x.shape[1], s = ctx.shape[1]
        let q = toQ(x), k = toK(ctx), v = toV(ctx)
        let d = q.shape[2] / heads
        let split = { (t: Tensor, n: Int) in t.reshaped([b, n, self.heads, d]).permuted([0, 2, 1, 3]) }
        let o = scaledDotProductAttention(split(q, l), split(k, s), split(v, s))
        return toOut(o.permuted([0, 2, 1, 3]).reshaped([b, l, heads * d]))
    }

    /// The legacy spatial form: x (B, C, H, W) -> group_norm, attention over H*W, + residual, / rescale.
    public func spatial(_ x: Tensor) -> Tensor {
        let (b, c, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        let normed = groupNorm.map { $0(x) } ?? x
        let seq = normed.reshaped([b, c, h * w]).transposed(1, 2)
        var out = self(seq).transposed(1, 2).reshaped([b, c, h, w])
        if residualConnection { out = out + x }
        return rescaleOutputFactor == 1 ? out : out / rescaleOutputFactor
    }

    public var namedParameters: [(String, Tensor)] {
        scoped("group_norm", groupNorm) + scoped("to_q", toQ) + scoped("to_k", toK) + scoped("to_v", toV) + scoped("to_out.0", toOut)
    }
}

/// FeedForward with GEGLU: net.0.proj = Linear(dim, inner * 2); hidden, gate = chunk(2); hidden * gelu(gate); net.2.
public final class FeedForward: Module {
    public let proj: Linear, out: Linear
    public init(dim: Int, mult: Int = 4) { proj = Linear(dim, dim * mult * 2); out = Linear(dim * mult, dim) }
    public func callAsFunction(_ x: Tensor) -> Tensor { out(proj(x).geglu()) }
    public var namedParameters: [(String, Tensor)] { scoped("net.0.proj", proj) + scoped("net.2", out) }
}

/// BasicTransformerBlock (norm_type "layer_norm"): self-attention, cross-attention to the context, GEGLU feed-forward,
/// each pre-normed with a LayerNorm (eps 1e-5) and added to the residual stream.
public final class BasicTransformerBlock: Module {
    public let norm1: LayerNorm, attn1: Attention, norm2: LayerNorm, attn2: Attention, norm3: LayerNorm, ff: FeedForward
    public init(dim: Int, heads: Int, dimHead: Int, crossAttentionDim: Int?) {
        norm1 = LayerNorm(dim); attn1 = Attention(queryDim: dim, heads: heads, dimHead: dimHead)
        norm2 = LayerNorm(dim); attn2 = Attention(queryDim: dim, crossAttentionDim: crossAttentionDim, heads: heads, dimHead: dimHead)
        norm3 = LayerNorm(dim); ff = FeedForward(dim: dim)
    }
    public func callAsFunction(_ x: Tensor, context: Tensor?) -> Tensor {
        var h = attn1(norm1(x)) + x
        h = attn2(norm2(h), context: context) + h
        return ff(norm3(h)) + h
    }
    public var namedParameters: [(String, Tensor)] {
        scoped("norm1", norm1) + scoped("attn1", attn1) + scoped("norm2", norm2) + scoped("attn2", attn2)
            + scoped("norm3", norm3) + scoped("ff", ff)
    }
}

/// Transformer2DModel / SpatialTransformer: GroupNorm (eps 1e-6), proj_in (1x1 conv, or linear with
/// use_linear_projection), transformer blocks over the H*W tokens, proj_out, + residual.
public final class Transformer2DModel: Module {
    public let norm: GroupNorm
    /// proj_in / proj_out: 1x1 convolutions (SD1), or linears with use_linear_projection (SD2); one of each pair is set.
    public let projInConv: Conv2d?, projOutConv: Conv2d?, projInLinear: Linear?, projOutLinear: Linear?
    public let transformerBlocks: [BasicTransformerBlock]
    public let useLinearProjection: Bool

    public init(heads: Int, dimHead: Int, inChannels: Int, layers: Int, crossAttentionDim: Int?, normNumGroups: Int,
                useLinearProjection: Bool) {
        let inner = heads * dimHead
        self.useLinearProjection = useLinearProjection
        norm = GroupNorm(groups: normNumGroups, channels: inChannels, eps: 1e-6)
        projInLinear = useLinearProjection ? Linear(inChannels, inner) : nil
        projOutLinear = useLinearProjection ? Linear(inner, inChannels) : nil
        projInConv = useLinearProjection ? nil : Conv2d(inChannels, inner, kernel: 1)
        projOutConv = useLinearProjection ? nil : Conv2d(inner, inChannels, kernel: 1)
        transformerBlocks = (0..<layers).map { _ in
            BasicTransformerBlock(dim: inner, heads: heads, dimHead: dimHead, crossAttentionDim: crossAttentionDim)
        }
    }

    public func callAsFunction(_ x: Tensor, context: Tensor?) -> Tensor {
        let (b, c, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        var t: Tensor
        let normed = norm(x)
        if let conv = projInConv {
            let y = conv(normed)
            t = y.permuted([0, 2, 3, 1]).reshaped([b, h * w, y.shape[1]])
        } else {
            t = normed.permuted([0, 2, 3, 1]).reshaped([b, h * w, c])
            if let lin = projInLinear { t = lin(t) }
        }
        for block in transformerBlocks { t = block(t, context: context) }
        let inner = t.shape[2]
        let out: Tensor
        if let conv = projOutConv {
            out = conv(t.reshaped([b, h, w, inner]).permuted([0, 3, 1, 2]))
        } else {
            out = (projOutLinear.map { $0(t) } ?? t).reshaped([b, h, w, c]).permuted([0, 3, 1, 2])
        }
        return out + x
    }

    public var namedParameters: [(String, Tensor)] {
        scoped("norm", norm) + scoped("proj_in", projInConv) + scoped("proj_in", projInLinear)
            + scoped("transformer_blocks", transformerBlocks) + scoped("proj_out", projOutConv) + scoped("proj_out", projOutLinear)
    }
}
