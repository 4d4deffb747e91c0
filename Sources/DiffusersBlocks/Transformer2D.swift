// Follows diffusers src/diffusers/models/transformers/transformer_2d.py `Transformer2DModel` (continuous input, conv
// or linear projections). CompVis: SpatialTransformer in ldm/modules/attention.py.
import NeuralNetwork
import TensorCore

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
            t = conv.tokens(normed)
        } else {
            t = normed.permuted([0, 2, 3, 1]).reshaped([b, h * w, c])
            if let lin = projInLinear { t = lin(t) }
        }
        for block in transformerBlocks { t = block(t, context: context) }
        let inner = t.shape[2]
        if let conv = projOutConv {
            // The residual added in proj_out's GEMM, the token layout read in place (Conv2d's `adding:`).
            return conv(t.reshaped([b, h, w, inner]).permuted([0, 3, 1, 2]), adding: x)
        }
        return (projOutLinear.map { $0(t) } ?? t).reshaped([b, h, w, c]).permuted([0, 3, 1, 2]) + x
    }

    public var namedParameters: [(String, Tensor)] {
        scoped("norm", norm) + scoped("proj_in", projInConv) + scoped("proj_in", projInLinear)
            + scoped("transformer_blocks", transformerBlocks) + scoped("proj_out", projOutConv) + scoped("proj_out", projOutLinear)
    }
}
