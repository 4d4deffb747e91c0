import NeuralNetwork
import TensorCore

// Matches diffusers models/unets/unet_2d_blocks.py: CrossAttnDownBlock2D / DownBlock2D / AttnDownBlock2D /
// ResnetDownsampleBlock2D, UNetMidBlock2DCrossAttn / UNetMidBlock2D, CrossAttnUpBlock2D / UpBlock2D / AttnUpBlock2D /
// ResnetUpsampleBlock2D. One class per role; the block type decides which attention layer (transformer, legacy
// attention, none) follows each resnet and whether the resampler is a conv or a ResnetBlock2D(down/up=True)
// (ResnetDownsample/UpsampleBlock2D always, AttnDown/UpBlock2D with downsample_type / upsample_type "resnet").

/// An attention layer placed after a resnet: a Transformer2DModel (cross-attention) or a legacy spatial Attention.
public protocol SpatialAttentionLayer: Module {
    func apply(_ x: Tensor, context: Tensor?) -> Tensor
}
extension Transformer2DModel: SpatialAttentionLayer {
    public func apply(_ x: Tensor, context: Tensor?) -> Tensor { self(x, context: context) }
}
extension Attention: SpatialAttentionLayer {
    public func apply(_ x: Tensor, context: Tensor?) -> Tensor { spatial(x) }
}

/// What the block builders need from the UNet configuration.
struct BlockSettings {
    var tembChannels: Int, groups: Int, eps: Float, timeScaleShift: String
    var useLinearProjection: Bool, attnGroups: Int?
    /// UNet2DModel downsample_type / upsample_type ("conv" or "resnet"), used by AttnDownBlock2D / AttnUpBlock2D.
    var downsampleType = "conv", upsampleType = "conv"
}

/// Whether a down block of `type` downsamples with a ResnetBlock2D(down=True) (diffusers get_down_block).
func resnetDownsampling(_ type: String, downsampleType: String) -> Bool {
    type == "ResnetDownsampleBlock2D" || (type == "AttnDownBlock2D" && downsampleType == "resnet")
}
/// Whether an up block of `type` upsamples with a ResnetBlock2D(up=True) (diffusers get_up_block).
func resnetUpsampling(_ type: String, upsampleType: String) -> Bool {
    type == "ResnetUpsampleBlock2D" || (type == "AttnUpBlock2D" && upsampleType == "resnet")
}

/// The attention of one block type, or nil for plain blocks.
func makeAttention(_ type: String, channels: Int, heads: Int, legacyHeadDim: Int, layers: Int, crossAttentionDim: Int?,
                   _ s: BlockSettings, rescaleOutputFactor: Float = 1) -> SpatialAttentionLayer? {
    if type.hasPrefix("CrossAttn") || type == "UNetMidBlock2DCrossAttn" {
        return Transformer2DModel(heads: heads, dimHead: channels / heads, inChannels: channels, layers: layers,
                                  crossAttentionDim: crossAttentionDim, normNumGroups: s.groups,
                                  useLinearProjection: s.useLinearProjection)
    }
    if type.hasPrefix("Attn") || type == "UNetMidBlock2D" {
        return Attention(queryDim: channels, heads: channels / legacyHeadDim, dimHead: legacyHeadDim, bias: true,
                         normNumGroups: s.attnGroups, eps: s.eps, residualConnection: true,
                         rescaleOutputFactor: rescaleOutputFactor)
    }
    return nil
}

/// CrossAttnDownBlock2D / DownBlock2D / AttnDownBlock2D / ResnetDownsampleBlock2D.
public final class UNetDownBlock2D: Module {
    public let resnets: [ResnetBlock2D]
    public let attentions: [SpatialAttentionLayer]
    /// "downsamplers.0": a strided conv, or (resnetDownsampler) a ResnetBlock2D(down=True).
    public let downsampler: Downsample2D?
    public let resnetDownsampler: ResnetBlock2D?

    init(type: String, layers: Int, inChannels: Int, outChannels: Int, addDownsample: Bool, downsamplePadding: Int,
         heads: Int, legacyHeadDim: Int, transformerLayers: Int, crossAttentionDim: Int?, _ s: BlockSettings) {
        resnets = (0..<layers).map { i in
            ResnetBlock2D(inChannels: i == 0 ? inChannels : outChannels, outChannels: outChannels, tembChannels: s.tembChannels,
                          groups: s.groups, eps: s.eps, timeEmbeddingNorm: s.timeScaleShift)
        }
        var settings = s
        settings.attnGroups = s.groups
        attentions = (0..<layers).compactMap { _ in
            makeAttention(type, channels: outChannels, heads: heads, legacyHeadDim: legacyHeadDim, layers: transformerLayers,
                          crossAttentionDim: crossAttentionDim, settings)
        }
        let resnetDown = addDownsample && resnetDownsampling(type, downsampleType: s.downsampleType)
        downsampler = addDownsample && !resnetDown ? Downsample2D(channels: outChannels, outChannels: outChannels, padding: downsamplePadding) : nil
        resnetDownsampler = resnetDown
            ? ResnetBlock2D(inChannels: outChannels, outChannels: outChannels, tembChannels: s.tembChannels, groups: s.groups,
                            eps: s.eps, timeEmbeddingNorm: s.timeScaleShift, resample: .down) : nil
    }

    /// Returns the output and the states kept for the skip connections (one per resnet, plus the downsampled one).
    func callAsFunction(_ x: Tensor, tembAct: Tensor?, context: Tensor?) -> (Tensor, [Tensor]) {
        var h = x, states: [Tensor] = []
        for (i, resnet) in resnets.enumerated() {
            h = resnet(h, tembAct: tembAct)
            if i < attentions.count { h = attentions[i].apply(h, context: context) }
            states.append(h)
        }
        if let downsampler { h = downsampler(h); states.append(h) }
        if let resnetDownsampler { h = resnetDownsampler(h, tembAct: tembAct); states.append(h) }
        return (h, states)
    }

    public var namedParameters: [(String, Tensor)] {
        scoped("resnets", resnets) + scoped("attentions", attentions) + scoped("downsamplers.0", downsampler)
            + scoped("downsamplers.0", resnetDownsampler)
    }
}

/// UNetMidBlock2DCrossAttn / UNetMidBlock2D: resnet, then (attention, resnet) per layer.
public final class UNetMidBlock2D: Module {
    public let resnets: [ResnetBlock2D]
    public let attentions: [SpatialAttentionLayer]

    init(type: String, channels: Int, heads: Int, legacyHeadDim: Int, transformerLayers: Int, crossAttentionDim: Int?,
         addAttention: Bool, outputScaleFactor: Float, _ s: BlockSettings) {
        resnets = (0..<2).map { _ in
            ResnetBlock2D(inChannels: channels, outChannels: channels, tembChannels: s.tembChannels, groups: s.groups, eps: s.eps,
                          timeEmbeddingNorm: s.timeScaleShift, outputScaleFactor: outputScaleFactor)
        }
        var settings = s
        // UNetMidBlock2D: attn_groups defaults to the resnet groups only with time_embedding_norm "default".
        settings.attnGroups = s.attnGroups ?? (s.timeScaleShift == "default" ? s.groups : nil)
        let attention = addAttention || type == "UNetMidBlock2DCrossAttn"
            ? makeAttention(type, channels: channels, heads: heads, legacyHeadDim: legacyHeadDim, layers: transformerLayers,
                            crossAttentionDim: crossAttentionDim, settings, rescaleOutputFactor: outputScaleFactor) : nil
        attentions = attention.map { [$0] } ?? []
    }

    func callAsFunction(_ x: Tensor, tembAct: Tensor?, context: Tensor?) -> Tensor {
        var h = resnets[0](x, tembAct: tembAct)
        for attention in attentions { h = attention.apply(h, context: context) }
        return resnets[1](h, tembAct: tembAct)
    }

    public var namedParameters: [(String, Tensor)] { scoped("attentions", attentions) + scoped("resnets", resnets) }
}

/// CrossAttnUpBlock2D / UpBlock2D / AttnUpBlock2D / ResnetUpsampleBlock2D: each resnet takes the hidden state
/// concatenated (on channels) with the last remaining skip state.
public final class UNetUpBlock2D: Module {
    public let resnets: [ResnetBlock2D]
    public let attentions: [SpatialAttentionLayer]
    /// "upsamplers.0": nearest 2x + conv, or (resnetUpsampler) a ResnetBlock2D(up=True).
    public let upsampler: Upsample2D?
    public let resnetUpsampler: ResnetBlock2D?

    init(type: String, layers: Int, inChannels: Int, outChannels: Int, prevOutputChannels: Int, addUpsample: Bool,
         heads: Int, legacyHeadDim: Int, transformerLayers: Int, crossAttentionDim: Int?, _ s: BlockSettings) {
        resnets = (0..<layers).map { i in
            let skip = i == layers - 1 ? inChannels : outChannels
            let resIn = i == 0 ? prevOutputChannels : outChannels
            return ResnetBlock2D(inChannels: resIn + skip, outChannels: outChannels, tembChannels: s.tembChannels,
                                 groups: s.groups, eps: s.eps, timeEmbeddingNorm: s.timeScaleShift)
        }
        var settings = s
        settings.attnGroups = s.groups
        attentions = (0..<layers).compactMap { _ in
            makeAttention(type, channels: outChannels, heads: heads, legacyHeadDim: legacyHeadDim, layers: transformerLayers,
                          crossAttentionDim: crossAttentionDim, settings)
        }
        let resnetUp = addUpsample && resnetUpsampling(type, upsampleType: s.upsampleType)
        upsampler = addUpsample && !resnetUp ? Upsample2D(channels: outChannels, outChannels: outChannels) : nil
        resnetUpsampler = resnetUp
            ? ResnetBlock2D(inChannels: outChannels, outChannels: outChannels, tembChannels: s.tembChannels, groups: s.groups,
                            eps: s.eps, timeEmbeddingNorm: s.timeScaleShift, resample: .up) : nil
    }

    /// Pops one skip state per resnet from the end of `skips`; upsamples to `upsampleSize` (the next skip's size).
    func callAsFunction(_ x: Tensor, skips: inout [Tensor], tembAct: Tensor?, context: Tensor?, upsampleSize: (Int, Int)?) -> Tensor {
        var h = x
        for (i, resnet) in resnets.enumerated() {
            let skip = skips.removeLast()
            h = resnet(concat([h, skip], axis: 1), tembAct: tembAct)
            if i < attentions.count { h = attentions[i].apply(h, context: context) }
        }
        if let upsampler { h = upsampler(h, size: upsampleSize) }
        // diffusers calls the resnet upsampler without upsample_size: always 2x (CompVis: F.interpolate scale 2).
        if let resnetUpsampler { h = resnetUpsampler(h, tembAct: tembAct) }
        return h
    }

    public var namedParameters: [(String, Tensor)] {
        scoped("resnets", resnets) + scoped("attentions", attentions) + scoped("upsamplers.0", upsampler)
            + scoped("upsamplers.0", resnetUpsampler)
    }
}
