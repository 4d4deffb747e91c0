// Follows diffusers src/diffusers/models/unets/unet_2d_blocks.py: the UNet's CrossAttnDownBlock2D / DownBlock2D /
// AttnDownBlock2D / ResnetDownsampleBlock2D, UNetMidBlock2DCrossAttn / UNetMidBlock2D, CrossAttnUpBlock2D / UpBlock2D /
// AttnUpBlock2D / ResnetUpsampleBlock2D, and the VAE's DownEncoderBlock2D / AttnDownEncoderBlock2D, UpDecoderBlock2D /
// AttnUpDecoderBlock2D. One class per role; the block type (BlockTypes.swift) decides which attention layer
// (transformer, spatial attention, none) follows each resnet and whether the resampler is a conv or a
// ResnetBlock2D(down/up=True). CompVis: input_blocks / middle_block / output_blocks of openaimodel.py UNetModel, and
// down / mid / up of model.py Encoder / Decoder.
import NeuralNetwork
import TensorCore

/// An attention layer placed after a resnet: a Transformer2DModel (cross-attention) or a spatial Attention.
public protocol SpatialAttentionLayer: Module {
    func apply(_ x: Tensor, context: Tensor?) -> Tensor
}
extension Transformer2DModel: SpatialAttentionLayer {
    public func apply(_ x: Tensor, context: Tensor?) -> Tensor { self(x, context: context) }
}
extension Attention: SpatialAttentionLayer {
    public func apply(_ x: Tensor, context: Tensor?) -> Tensor { spatial(x) }
}

/// What the UNet block builders need from the UNet configuration.
public struct BlockSettings: Sendable {
    public var tembChannels: Int, groups: Int, eps: Float, timeScaleShift: TimeEmbeddingNorm
    public var useLinearProjection: Bool, attnGroups: Int?
    /// UNet2DModel downsample_type / upsample_type, used by AttnDownBlock2D / AttnUpBlock2D.
    public var downsampleType: ResampleType, upsampleType: ResampleType

    public init(tembChannels: Int, groups: Int, eps: Float, timeScaleShift: TimeEmbeddingNorm, useLinearProjection: Bool, attnGroups: Int?,
                downsampleType: ResampleType = .conv, upsampleType: ResampleType = .conv) {
        self.tembChannels = tembChannels
        self.groups = groups
        self.eps = eps
        self.timeScaleShift = timeScaleShift
        self.useLinearProjection = useLinearProjection
        self.attnGroups = attnGroups
        self.downsampleType = downsampleType
        self.upsampleType = upsampleType
    }

    /// A resnet of the UNet's blocks.
    func resnet(_ inChannels: Int, _ outChannels: Int, outputScaleFactor: Float = 1, resample: ResnetBlock2D.Resample = .none) -> ResnetBlock2D {
        ResnetBlock2D(inChannels: inChannels, outChannels: outChannels, tembChannels: tembChannels, groups: groups, eps: eps,
                      timeEmbeddingNorm: timeScaleShift, outputScaleFactor: outputScaleFactor, resample: resample)
    }
}

/// The attention layer of one block kind, or nil for plain blocks.
func makeAttention(_ kind: BlockAttention?, channels: Int, heads: Int, legacyHeadDim: Int, layers: Int, crossAttentionDim: Int?,
                   _ s: BlockSettings, rescaleOutputFactor: Float = 1) -> SpatialAttentionLayer? {
    switch kind {
    case .crossAttention?:
        return Transformer2DModel(heads: heads, dimHead: channels / heads, inChannels: channels, layers: layers,
                                  crossAttentionDim: crossAttentionDim, normNumGroups: s.groups,
                                  useLinearProjection: s.useLinearProjection)
    case .spatial?:
        return Attention(queryDim: channels, heads: channels / legacyHeadDim, dimHead: legacyHeadDim, bias: true,
                         normNumGroups: s.attnGroups, eps: s.eps, residualConnection: true,
                         rescaleOutputFactor: rescaleOutputFactor)
    case nil:
        return nil
    }
}

/// CrossAttnDownBlock2D / DownBlock2D / AttnDownBlock2D / ResnetDownsampleBlock2D.
public final class UNetDownBlock2D: Module {
    public let resnets: [ResnetBlock2D]
    public let attentions: [SpatialAttentionLayer]
    /// "downsamplers.0": a strided conv, or (resnetDownsampler) a ResnetBlock2D(down=True).
    public let downsampler: Downsample2D?
    public let resnetDownsampler: ResnetBlock2D?

    public init(type: DownBlockType, layers: Int, inChannels: Int, outChannels: Int, addDownsample: Bool, downsamplePadding: Int,
                heads: Int, legacyHeadDim: Int, transformerLayers: Int, crossAttentionDim: Int?, _ s: BlockSettings) {
        resnets = (0..<layers).map { i in s.resnet(i == 0 ? inChannels : outChannels, outChannels) }
        var settings = s
        settings.attnGroups = s.groups
        attentions = (0..<layers).compactMap { _ in
            makeAttention(type.attention, channels: outChannels, heads: heads, legacyHeadDim: legacyHeadDim, layers: transformerLayers,
                          crossAttentionDim: crossAttentionDim, settings)
        }
        let resnetDown = addDownsample && type.downsamplesWithResnet(s.downsampleType)
        downsampler = addDownsample && !resnetDown ? Downsample2D(channels: outChannels, padding: downsamplePadding) : nil
        resnetDownsampler = resnetDown ? s.resnet(outChannels, outChannels, resample: .down) : nil
    }

    /// Returns the output and the states kept for the skip connections (one per resnet, plus the downsampled one).
    public func callAsFunction(_ x: Tensor, tembAct: Tensor?, context: Tensor?) -> (Tensor, [Tensor]) {
        var h = x, states: [Tensor] = []
        for (i, resnet) in resnets.enumerated() {
            h = resnet(h, tembAct: tembAct)
            if i < attentions.count { h = attentions[i].apply(h, context: context) }
            states.append(h)
        }
        if let downsampler {
            h = downsampler(h)
            states.append(h)
        }
        if let resnetDownsampler {
            h = resnetDownsampler(h, tembAct: tembAct)
            states.append(h)
        }
        return (h, states)
    }

    public var namedParameters: [(String, Tensor)] {
        scoped("resnets", resnets) + scoped("attentions", attentions) + scoped("downsamplers.0", downsampler)
            + scoped("downsamplers.0", resnetDownsampler)
    }
}

/// UNetMidBlock2DCrossAttn / UNetMidBlock2D (the UNet's and, without time embedding, the VAE's): resnets.0, then the
/// optional attentions.0, then resnets.1.
public final class UNetMidBlock2D: Module {
    /// The order of `namedParameters`. diffusers registers the attentions first; the VAE has listed its resnets first
    /// since its first release, and that order is kept because the latent cache's fingerprint and the gradient-norm
    /// sum of training follow it.
    public enum ParameterOrder: Sendable { case attentionsFirst, resnetsFirst }
    public let resnets: [ResnetBlock2D]
    public let attentions: [SpatialAttentionLayer]
    public let parameterOrder: ParameterOrder
    public var attention: SpatialAttentionLayer? { attentions.first }

    public init(resnets: [ResnetBlock2D], attention: SpatialAttentionLayer?, parameterOrder: ParameterOrder = .attentionsFirst) {
        precondition(resnets.count == 2, "UNetMidBlock2D: two resnets, got \(resnets.count)")
        self.resnets = resnets
        attentions = attention.map { [$0] } ?? []
        self.parameterOrder = parameterOrder
    }

    /// The UNet's mid block of `type` (with a time embedding, attention per `addAttention` or the cross-attention type).
    public convenience init(type: MidBlockType, channels: Int, heads: Int, legacyHeadDim: Int, transformerLayers: Int,
                            crossAttentionDim: Int?, addAttention: Bool, outputScaleFactor: Float, _ s: BlockSettings) {
        var settings = s
        // UNetMidBlock2D: attn_groups defaults to the resnet groups only with time_embedding_norm "default".
        settings.attnGroups = s.attnGroups ?? (s.timeScaleShift == .default ? s.groups : nil)
        let attention = addAttention || type == .unetMidBlock2DCrossAttn
            ? makeAttention(type.attention, channels: channels, heads: heads, legacyHeadDim: legacyHeadDim, layers: transformerLayers,
                            crossAttentionDim: crossAttentionDim, settings, rescaleOutputFactor: outputScaleFactor) : nil
        self.init(resnets: (0..<2).map { _ in s.resnet(channels, channels, outputScaleFactor: outputScaleFactor) }, attention: attention)
    }

    /// The VAE encoder's / decoder's mid block: UNetMidBlock2D with temb_channels None, resnet_eps 1e-6, one-head
    /// attention (attention_head_dim = channels) unless `addAttention` is false (mid_block_add_attention).
    public convenience init(channels: Int, groups: Int, addAttention: Bool) {
        self.init(resnets: (0..<2).map { _ in ResnetBlock2D(inChannels: channels, outChannels: channels, groups: groups) },
                  attention: addAttention ? Attention(spatialChannels: channels, groups: groups) : nil, parameterOrder: .resnetsFirst)
    }

    public func callAsFunction(_ x: Tensor, tembAct: Tensor? = nil, context: Tensor? = nil) -> Tensor {
        var h = resnets[0](x, tembAct: tembAct)
        for attention in attentions { h = attention.apply(h, context: context) }
        return resnets[1](h, tembAct: tembAct)
    }

    public var namedParameters: [(String, Tensor)] {
        switch parameterOrder {
        case .attentionsFirst: return scoped("attentions", attentions) + scoped("resnets", resnets)
        case .resnetsFirst: return scoped("resnets", resnets) + scoped("attentions", attentions)
        }
    }
}

/// CrossAttnUpBlock2D / UpBlock2D / AttnUpBlock2D / ResnetUpsampleBlock2D: each resnet takes the hidden state
/// concatenated (on channels) with the last remaining skip state.
public final class UNetUpBlock2D: Module {
    public let resnets: [ResnetBlock2D]
    public let attentions: [SpatialAttentionLayer]
    /// "upsamplers.0": nearest 2x + conv, or (resnetUpsampler) a ResnetBlock2D(up=True).
    public let upsampler: Upsample2D?
    public let resnetUpsampler: ResnetBlock2D?

    public init(type: UpBlockType, layers: Int, inChannels: Int, outChannels: Int, prevOutputChannels: Int, addUpsample: Bool,
                heads: Int, legacyHeadDim: Int, transformerLayers: Int, crossAttentionDim: Int?, _ s: BlockSettings) {
        resnets = (0..<layers).map { i in
            let skip = i == layers - 1 ? inChannels : outChannels
            let resIn = i == 0 ? prevOutputChannels : outChannels
            return s.resnet(resIn + skip, outChannels)
        }
        var settings = s
        settings.attnGroups = s.groups
        attentions = (0..<layers).compactMap { _ in
            makeAttention(type.attention, channels: outChannels, heads: heads, legacyHeadDim: legacyHeadDim, layers: transformerLayers,
                          crossAttentionDim: crossAttentionDim, settings)
        }
        let resnetUp = addUpsample && type.upsamplesWithResnet(s.upsampleType)
        upsampler = addUpsample && !resnetUp ? Upsample2D(channels: outChannels) : nil
        resnetUpsampler = resnetUp ? s.resnet(outChannels, outChannels, resample: .up) : nil
    }

    /// Pops one skip state per resnet from the end of `skips`; upsamples to `upsampleSize` (the next skip's size).
    public func callAsFunction(_ x: Tensor, skips: inout [Tensor], tembAct: Tensor?, context: Tensor?, upsampleSize: (Int, Int)?) -> Tensor {
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

/// The VAE encoder's DownEncoderBlock2D: `layers` resnets (no time embedding), then an optional Downsample2D with
/// padding 0 ("downsamplers.0"); with `addAttention`, AttnDownEncoderBlock2D: a one-head spatial attention
/// ("attentions.N") after every resnet, as the CompVis Encoder's `down[i].attn` at the levels in attn_resolutions.
public final class DownEncoderBlock2D: Module {
    public let resnets: [ResnetBlock2D]
    public let attentions: [Attention]
    public let downsampler: Downsample2D?
    public init(inChannels: Int, outChannels: Int, layers: Int, groups: Int, addDownsample: Bool, addAttention: Bool = false) {
        resnets = (0..<layers).map { ResnetBlock2D(inChannels: $0 == 0 ? inChannels : outChannels, outChannels: outChannels, groups: groups) }
        attentions = addAttention ? (0..<layers).map { _ in Attention(spatialChannels: outChannels, groups: groups) } : []
        downsampler = addDownsample ? Downsample2D(channels: outChannels, padding: 0) : nil
    }
    public func callAsFunction(_ x: Tensor) -> Tensor {
        var h = x
        for (i, r) in resnets.enumerated() {
            h = r(h)
            if i < attentions.count { h = attentions[i].spatial(h) }
        }
        return downsampler?(h) ?? h
    }
    public var namedParameters: [(String, Tensor)] {
        scoped("resnets", resnets) + scoped("attentions", attentions) + scoped("downsamplers.0", downsampler)
    }
}

/// The VAE decoder's UpDecoderBlock2D: `layers` (= layers_per_block + 1) resnets, then an optional Upsample2D
/// ("upsamplers.0"); with `addAttention`, AttnUpDecoderBlock2D (a spatial attention after every resnet; CompVis Decoder
/// `up[i].attn`).
public final class UpDecoderBlock2D: Module {
    public let resnets: [ResnetBlock2D]
    public let attentions: [Attention]
    public let upsampler: Upsample2D?
    public init(inChannels: Int, outChannels: Int, layers: Int, groups: Int, addUpsample: Bool, addAttention: Bool = false) {
        resnets = (0..<layers).map { ResnetBlock2D(inChannels: $0 == 0 ? inChannels : outChannels, outChannels: outChannels, groups: groups) }
        attentions = addAttention ? (0..<layers).map { _ in Attention(spatialChannels: outChannels, groups: groups) } : []
        upsampler = addUpsample ? Upsample2D(channels: outChannels) : nil
    }
    public func callAsFunction(_ x: Tensor) -> Tensor {
        var h = x
        for (i, r) in resnets.enumerated() {
            h = r(h)
            if i < attentions.count { h = attentions[i].spatial(h) }
        }
        return upsampler?(h) ?? h
    }
    public var namedParameters: [(String, Tensor)] {
        scoped("resnets", resnets) + scoped("attentions", attentions) + scoped("upsamplers.0", upsampler)
    }
}
