// Follows diffusers src/diffusers/models/attention_processor.py `Attention` with AttnProcessor2_0: the transformers'
// self- and cross-attention, and with group_norm + residual_connection the spatial self-attention of the VAE
// (UNetMidBlock2D, AttnDown/UpEncoderBlock2D: one head of all channels) and of the legacy UNet blocks (AttnDownBlock2D,
// UNetMidBlock2D). CompVis: CrossAttention in ldm/modules/attention.py, AttnBlock in ldm/modules/diffusionmodules/
// model.py, AttentionBlock in openaimodel.py.
import NeuralNetwork
import TensorCore

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
        self.heads = heads
        self.residualConnection = residualConnection
        self.rescaleOutputFactor = rescaleOutputFactor
        toQ = Linear(queryDim, inner, bias: bias)
        toK = Linear(kv, inner, bias: bias)
        toV = Linear(kv, inner, bias: bias)
        toOut = Linear(inner, queryDim)
        groupNorm = normNumGroups.map { GroupNorm(groups: $0, channels: queryDim, eps: eps) }
    }

    /// x (B, L, C), context (B, S, Ck) or nil for self-attention -> (B, L, C) (+ residual, added in to_out's GEMM where
    /// Linear can).
    public func callAsFunction(_ x: Tensor, context: Tensor? = nil, adding residual: Tensor? = nil) -> Tensor {
        let ctx = context ?? x
        let b = x.shape[0], l = x.shape[1], s = ctx.shape[1]
        let q = toQ(x), k = toK(ctx), v = toV(ctx)
        let d = q.shape[2] / heads
        let split = { (t: Tensor, n: Int) in t.reshaped([b, n, self.heads, d]).permuted([0, 2, 1, 3]) }
        let o = scaledDotProductAttention(split(q, l), split(k, s), split(v, s))
        let merged = o.permuted([0, 2, 1, 3]).reshaped([b, l, heads * d])
        return residual.map { toOut(merged, adding: $0) } ?? toOut(merged)
    }

    /// The spatial self-attention of the VAE blocks (diffusers UNetMidBlock2D / AttnDownEncoderBlock2D /
    /// AttnUpDecoderBlock2D with attention_head_dim = channels): one head, biased projections, GroupNorm(`groups`, eps)
    /// in front, the input added back.
    public convenience init(spatialChannels channels: Int, groups: Int, eps: Float = 1e-6) {
        self.init(queryDim: channels, heads: 1, dimHead: channels, bias: true, normNumGroups: groups, eps: eps, residualConnection: true)
    }

    /// The legacy spatial form: x (B, C, H, W) -> group_norm, attention over H*W, + residual, / rescale.
    public func spatial(_ x: Tensor) -> Tensor {
        let (b, c, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        let normed = groupNorm.map { $0(x) } ?? x
        // The (B, H*W, C) tokens made contiguous once: to_q, to_k and to_v read the same rows (each linear would
        // otherwise copy the transposed view itself).
        let seq = normed.reshaped([b, c, h * w]).transposed(1, 2).contiguous()
        var out = self(seq).transposed(1, 2).reshaped([b, c, h, w])
        if residualConnection { out = out + x }
        return rescaleOutputFactor == 1 ? out : out / rescaleOutputFactor
    }

    public var namedParameters: [(String, Tensor)] {
        scoped("group_norm", groupNorm) + scoped("to_q", toQ) + scoped("to_k", toK) + scoped("to_v", toV) + scoped("to_out.0", toOut)
    }
}
