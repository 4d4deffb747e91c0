// VAEEncoder matches diffusers Encoder (models/autoencoders/vae.py): conv_in, (Attn)DownEncoderBlock2D per block_out_channels entry
// (downsampling after all but the last), UNetMidBlock2D, GroupNorm(eps 1e-6) + swish, conv_out to 2*latent channels
// when double_z (KL) or latent channels (VQ). CompVis: Encoder in ldm/modules/diffusionmodules/model.py.
import DiffusersBlocks
import NeuralNetwork
import TensorCore

/// Channel layout shared by the encoder and decoder (the `ddconfig` of CompVis, the model config of diffusers).
public struct VAEArchitecture: Equatable, Sendable {
    public var inChannels: Int
    public var outChannels: Int
    public var blockOutChannels: [Int]
    public var layersPerBlock: Int
    public var latentChannels: Int
    public var normNumGroups: Int
    public var midBlockAddAttention: Bool
    /// Per encoder down block (diffusers order): AttnDownEncoderBlock2D, an attention after every resnet.
    public var downAttention: [Bool]
    /// Per decoder up block (diffusers order, lowest resolution first): AttnUpDecoderBlock2D.
    public var upAttention: [Bool]

    public init(inChannels: Int = 3, outChannels: Int = 3, blockOutChannels: [Int], layersPerBlock: Int, latentChannels: Int,
                normNumGroups: Int = 32, midBlockAddAttention: Bool = true, downAttention: [Bool] = [], upAttention: [Bool] = []) {
        self.inChannels = inChannels
        self.outChannels = outChannels
        self.blockOutChannels = blockOutChannels
        self.layersPerBlock = layersPerBlock
        self.latentChannels = latentChannels
        self.normNumGroups = normNumGroups
        self.midBlockAddAttention = midBlockAddAttention
        self.downAttention = downAttention
        self.upAttention = upAttention
    }

    /// Whether down block `i` / up block `i` has attentions (absent entries: no).
    public func hasDownAttention(_ i: Int) -> Bool { i < downAttention.count && downAttention[i] }
    public func hasUpAttention(_ i: Int) -> Bool { i < upAttention.count && upAttention[i] }

    /// Spatial reduction of the encoder: 2^(blocks - 1).
    public var downsamplingFactor: Int { 1 << max(blockOutChannels.count - 1, 0) }

    /// Throws when the numbers cannot describe a model (empty lists, channels not divisible into the groups ...).
    public func validate() throws {
        guard !blockOutChannels.isEmpty else { throw AutoencoderError("block_out_channels is empty") }
        guard downAttention.count <= blockOutChannels.count, upAttention.count <= blockOutChannels.count else {
            throw AutoencoderError("attention flags for more blocks than block_out_channels \(blockOutChannels)")
        }
        guard inChannels > 0, outChannels > 0, latentChannels > 0, layersPerBlock > 0, normNumGroups > 0 else {
            throw AutoencoderError("channel counts, layers_per_block and norm_num_groups must be positive (in \(inChannels), "
                + "out \(outChannels), latent \(latentChannels), layers \(layersPerBlock), groups \(normNumGroups))")
        }
        for c in blockOutChannels where c <= 0 || c % normNumGroups != 0 {
            throw AutoencoderError("block_out_channels \(blockOutChannels): \(c) is not a positive multiple of norm_num_groups \(normNumGroups)")
        }
    }
}

public final class VAEEncoder: Module {
    public let convIn: Conv2d
    public let downBlocks: [DownEncoderBlock2D]
    public let midBlock: UNetMidBlock2D
    public let convNormOut: GroupNorm
    public let convOut: Conv2d

    public init(_ a: VAEArchitecture, doubleZ: Bool) {
        let ch = a.blockOutChannels
        convIn = Conv2d(a.inChannels, ch[0], kernel: 3, padding: 1)
        downBlocks = ch.indices.map { i in
            DownEncoderBlock2D(inChannels: i == 0 ? ch[0] : ch[i - 1], outChannels: ch[i], layers: a.layersPerBlock,
                               groups: a.normNumGroups, addDownsample: i < ch.count - 1, addAttention: a.hasDownAttention(i))
        }
        midBlock = UNetMidBlock2D(channels: ch[ch.count - 1], groups: a.normNumGroups, addAttention: a.midBlockAddAttention)
        convNormOut = GroupNorm(groups: a.normNumGroups, channels: ch[ch.count - 1], eps: 1e-6)
        convOut = Conv2d(ch[ch.count - 1], doubleZ ? 2 * a.latentChannels : a.latentChannels, kernel: 3, padding: 1)
    }

    public func callAsFunction(_ x: Tensor) -> Tensor {
        var h = convIn(x)
        for block in downBlocks { h = block(h) }
        return convOut(convNormOut(midBlock(h), silu: true))
    }

    public var namedParameters: [(String, Tensor)] {
        scoped("conv_in", convIn) + scoped("down_blocks", downBlocks) + scoped("mid_block", midBlock)
            + scoped("conv_norm_out", convNormOut) + scoped("conv_out", convOut)
    }
}
