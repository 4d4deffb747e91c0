// Matches diffusers ResnetBlock2D (models/resnet.py, temb=None, pre_norm, output_scale_factor 1), Downsample2D with
// padding 0 (models/downsampling.py: F.pad (0, 1, 0, 1) then a stride-2 conv) and Upsample2D (models/upsampling.py:
// nearest 2x then a 3x3 conv), the pieces of the VAE's DownEncoderBlock2D / UpDecoderBlock2D (unets/unet_2d_blocks.py).
// CompVis equivalents: ResnetBlock / Downsample / Upsample in ldm/modules/diffusionmodules/model.py.
import NeuralNetwork
import TensorCore

/// GroupNorm -> swish -> conv3x3, twice, plus a (1x1-conv when channels change) shortcut.
public final class ResnetBlock2D: Module {
    public let norm1: GroupNorm, conv1: Conv2d, norm2: GroupNorm, conv2: Conv2d
    public let convShortcut: Conv2d?

    public init(inChannels: Int, outChannels: Int, groups: Int, eps: Float = 1e-6) {
        norm1 = GroupNorm(groups: groups, channels: inChannels, eps: eps)
        conv1 = Conv2d(inChannels, outChannels, kernel: 3, padding: 1)
        norm2 = GroupNorm(groups: groups, channels: outChannels, eps: eps)
        conv2 = Conv2d(outChannels, outChannels, kernel: 3, padding: 1)
        convShortcut = inChannels == outChannels ? nil : Conv2d(inChannels, outChannels, kernel: 1)
    }

    public func callAsFunction(_ x: Tensor) -> Tensor {
        if !GradMode.isEnabled {
            // Inference: the norms are applied band by band inside the convolutions and the residual sum overwrites
            // conv2's fresh output, so a block holds at most x and two activations at once (the VAE decoder's peak
            // memory at full resolution).
            let h = conv2.normalized(conv1.normalized(x, norm1, silu: true), norm2, silu: true)
            return h.accumulate(convShortcut?(x) ?? x)
        }
        let h = conv2(norm2(conv1(norm1(x, silu: true)), silu: true))
        return (convShortcut?(x) ?? x) + h
    }

    public var namedParameters: [(String, Tensor)] {
        scoped("norm1", norm1) + scoped("conv1", conv1) + scoped("norm2", norm2) + scoped("conv2", conv2)
            + scoped("conv_shortcut", convShortcut)
    }
}

/// Stride-2 3x3 conv after zero padding of one row at the bottom and one column at the right.
public final class Downsample2D: Module {
    public let conv: Conv2d
    public init(channels: Int) {
        conv = Conv2d(channels, channels, kernel: 3, stride: 2)
        conv.options.padding = (top: 0, left: 0, bottom: 1, right: 1)
    }
    public func callAsFunction(_ x: Tensor) -> Tensor { conv(x) }
    public var namedParameters: [(String, Tensor)] { scoped("conv", conv) }
}

/// Nearest-neighbour 2x upsampling followed by a 3x3 conv.
public final class Upsample2D: Module {
    public let conv: Conv2d
    public init(channels: Int) { conv = Conv2d(channels, channels, kernel: 3, padding: 1) }
    public func callAsFunction(_ x: Tensor) -> Tensor {
        conv.upsampling(x, factor: 2)
    }
    public var namedParameters: [(String, Tensor)] { scoped("conv", conv) }
}

/// diffusers DownEncoderBlock2D: `layers` resnets, then an optional Downsample2D ("downsamplers.0"); with
/// `addAttention`, AttnDownEncoderBlock2D: an attention (one head, "attentions.N") after every resnet, as the CompVis
/// Encoder's `down[i].attn` at the levels whose resolution is in attn_resolutions.
public final class DownEncoderBlock2D: Module {
    public let resnets: [ResnetBlock2D]
    public let attentions: [SpatialSelfAttention]
    public let downsampler: Downsample2D?
    public init(inChannels: Int, outChannels: Int, layers: Int, groups: Int, addDownsample: Bool, addAttention: Bool = false) {
        resnets = (0..<layers).map { ResnetBlock2D(inChannels: $0 == 0 ? inChannels : outChannels, outChannels: outChannels, groups: groups) }
        attentions = addAttention ? (0..<layers).map { _ in SpatialSelfAttention(channels: outChannels, groups: groups) } : []
        downsampler = addDownsample ? Downsample2D(channels: outChannels) : nil
    }
    public func callAsFunction(_ x: Tensor) -> Tensor {
        var h = x
        for (i, r) in resnets.enumerated() {
            h = r(h)
            if i < attentions.count { h = attentions[i](h) }
        }
        return downsampler?(h) ?? h
    }
    public var namedParameters: [(String, Tensor)] {
        scoped("resnets", resnets) + scoped("attentions", attentions) + (downsampler.map { scoped("downsamplers", [$0]) } ?? [])
    }
}

/// diffusers UpDecoderBlock2D: `layers` (= layers_per_block + 1) resnets, then an optional Upsample2D ("upsamplers.0");
/// with `addAttention`, AttnUpDecoderBlock2D (an attention after every resnet; CompVis Decoder `up[i].attn`).
public final class UpDecoderBlock2D: Module {
    public let resnets: [ResnetBlock2D]
    public let attentions: [SpatialSelfAttention]
    public let upsampler: Upsample2D?
    public init(inChannels: Int, outChannels: Int, layers: Int, groups: Int, addUpsample: Bool, addAttention: Bool = false) {
        resnets = (0..<layers).map { ResnetBlock2D(inChannels: $0 == 0 ? inChannels : outChannels, outChannels: outChannels, groups: groups) }
        attentions = addAttention ? (0..<layers).map { _ in SpatialSelfAttention(channels: outChannels, groups: groups) } : []
        upsampler = addUpsample ? Upsample2D(channels: outChannels) : nil
    }
    public func callAsFunction(_ x: Tensor) -> Tensor {
        var h = x
        for (i, r) in resnets.enumerated() {
            h = r(h)
            if i < attentions.count { h = attentions[i](h) }
        }
        return upsampler?(h) ?? h
    }
    public var namedParameters: [(String, Tensor)] {
        scoped("resnets", resnets) + scoped("attentions", attentions) + (upsampler.map { scoped("upsamplers", [$0]) } ?? [])
    }
}
