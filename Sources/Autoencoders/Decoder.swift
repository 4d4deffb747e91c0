// VAEDecoder matches diffusers Decoder (models/autoencoders/vae.py, norm_type "group"): conv_in, UNetMidBlock2D, one
// UpDecoderBlock2D per block_out_channels entry in reverse order with layers_per_block + 1 resnets (upsampling after
// all but the last; AttnUpDecoderBlock2D: an attention after every resnet), GroupNorm(eps 1e-6) + swish, conv_out. CompVis: Decoder in ldm/modules/diffusionmodules/model.py,
// whose `up` list is indexed in the opposite order (up.0 is the last block applied).
import DiffusersBlocks
import NeuralNetwork
import TensorCore

public final class VAEDecoder: Module {
    public let convIn: Conv2d
    public let midBlock: UNetMidBlock2D
    public let upBlocks: [UpDecoderBlock2D]
    public let convNormOut: GroupNorm
    public let convOut: Conv2d

    public init(_ a: VAEArchitecture) {
        let rev = Array(a.blockOutChannels.reversed())
        convIn = Conv2d(a.latentChannels, rev[0], kernel: 3, padding: 1)
        midBlock = UNetMidBlock2D(channels: rev[0], groups: a.normNumGroups, addAttention: a.midBlockAddAttention)
        upBlocks = rev.indices.map { i in
            UpDecoderBlock2D(inChannels: i == 0 ? rev[0] : rev[i - 1], outChannels: rev[i], layers: a.layersPerBlock + 1,
                             groups: a.normNumGroups, addUpsample: i < rev.count - 1, addAttention: a.hasUpAttention(i))
        }
        convNormOut = GroupNorm(groups: a.normNumGroups, channels: a.blockOutChannels[0], eps: 1e-6)
        convOut = Conv2d(a.blockOutChannels[0], a.outChannels, kernel: 3, padding: 1)
    }

    public func callAsFunction(_ z: Tensor) -> Tensor {
        var h = midBlock(convIn(z))
        for block in upBlocks { h = block(h) }
        return convOut(convNormOut(h, silu: true))
    }

    public var namedParameters: [(String, Tensor)] {
        scoped("conv_in", convIn) + scoped("mid_block", midBlock) + scoped("up_blocks", upBlocks)
            + scoped("conv_norm_out", convNormOut) + scoped("conv_out", convOut)
    }
}
