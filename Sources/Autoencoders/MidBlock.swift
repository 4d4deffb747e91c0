// Matches the VAE mid-block of diffusers: UNetMidBlock2D (unets/unet_2d_blocks.py, temb None, one layer) with its
// Attention (attention_processor.py Attention + AttnProcessor2_0: group_norm, to_q/to_k/to_v/to_out.0 linears,
// residual connection, heads = channels / attention_head_dim = 1 in the VAE). CompVis: AttnBlock (1x1 convs q, k, v,
// proj_out) between mid.block_1 and mid.block_2 in ldm/modules/diffusionmodules/model.py; attn_type "none" = no attention.
import NeuralNetwork
import TensorCore

/// Self-attention over the H*W positions of a feature map, with a GroupNorm in front and the input added back.
public final class SpatialSelfAttention: Module {
    public let groupNorm: GroupNorm
    public let toQ: Linear, toK: Linear, toV: Linear, toOut: Linear
    public let heads: Int

    public init(channels: Int, groups: Int, heads: Int = 1, eps: Float = 1e-6) {
        precondition(heads > 0 && channels % heads == 0, "attention: \(channels) channels not divisible into \(heads) heads")
        groupNorm = GroupNorm(groups: groups, channels: channels, eps: eps)
        toQ = Linear(channels, channels); toK = Linear(channels, channels); toV = Linear(channels, channels)
        toOut = Linear(channels, channels)
        self.heads = heads
    }

    public func callAsFunction(_ x: Tensor) -> Tensor {
        let (b, c, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        let l = h * w, d = c / heads
        let tokens = groupNorm(x).reshaped([b, c, l]).transposed(1, 2).contiguous()   // (B, L, C)
        let split = { (t: Tensor) in t.reshaped([b, l, self.heads, d]).permuted([0, 2, 1, 3]) }
        let attn = scaledDotProductAttention(split(toQ(tokens)), split(toK(tokens)), split(toV(tokens)))
        let out = toOut(attn.permuted([0, 2, 1, 3]).reshaped([b, l, c]))                // (B, L, C)
        return out.transposed(1, 2).reshaped([b, c, h, w]) + x
    }

    public var namedParameters: [(String, Tensor)] {
        scoped("group_norm", groupNorm) + scoped("to_q", toQ) + scoped("to_k", toK) + scoped("to_v", toV)
            + scoped("to_out.0", toOut)
    }
}

/// resnets.0 -> attentions.0 (optional) -> resnets.1.
public final class UNetMidBlock2D: Module {
    public let resnets: [ResnetBlock2D]
    public let attention: SpatialSelfAttention?

    public init(channels: Int, groups: Int, addAttention: Bool) {
        resnets = [ResnetBlock2D(inChannels: channels, outChannels: channels, groups: groups),
                   ResnetBlock2D(inChannels: channels, outChannels: channels, groups: groups)]
        attention = addAttention ? SpatialSelfAttention(channels: channels, groups: groups) : nil
    }

    public func callAsFunction(_ x: Tensor) -> Tensor {
        var h = resnets[0](x)
        if let attention { h = attention(h) }
        return resnets[1](h)
    }

    public var namedParameters: [(String, Tensor)] {
        scoped("resnets", resnets) + (attention.map { scoped("attentions", [$0]) } ?? [])
    }
}
