// The names that select blocks in a diffusers config.json — down_block_types, up_block_types, mid_block_type and
// UNet2DModel's downsample_type / upsample_type — as get_down_block / get_up_block / get_mid_block in
// src/diffusers/models/unets/unet_2d_blocks.py read them (the VAE's DownEncoderBlock2D / UpDecoderBlock2D included).
// A config may name a block this package does not implement: it decodes as `.other(name)`, so that the model's
// `validate()` can refuse it by name, as before; nothing else produces `.other`.

/// A block name of a diffusers config.json: one case per implemented name, `.other(name)` for any other.
public protocol DiffusersBlockName: RawRepresentable, Codable, Hashable, Sendable, CustomStringConvertible where RawValue == String {
    /// Every case but `.other`.
    static var implemented: [Self] { get }
    static func other(_ name: String) -> Self
}

extension DiffusersBlockName {
    /// The case of `name`: an implemented one, else `.other(name)`.
    public static func named(_ name: String) -> Self { implemented.first { $0.rawValue == name } ?? .other(name) }
    public init(rawValue: String) { self = Self.named(rawValue) }
    /// A JSON string, as diffusers writes it.
    public init(from decoder: Decoder) throws { self = Self.named(try decoder.singleValueContainer().decode(String.self)) }
    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(rawValue)
    }
    public var description: String { rawValue }
}

/// What follows each resnet of a block.
public enum BlockAttention: Sendable {
    /// A Transformer2DModel (self- and cross-attention): the CrossAttn* blocks.
    case crossAttention
    /// A spatial self-Attention with a GroupNorm in front: the Attn* blocks, UNetMidBlock2D.
    case spatial
}

public enum DownBlockType: DiffusersBlockName {
    /// UNet2DConditionModel / UNet2DModel blocks.
    case crossAttnDownBlock2D, downBlock2D, attnDownBlock2D, resnetDownsampleBlock2D
    /// The VAE encoder's blocks.
    case downEncoderBlock2D, attnDownEncoderBlock2D
    case other(String)

    public static let implemented: [DownBlockType] = [
        .crossAttnDownBlock2D, .downBlock2D, .attnDownBlock2D, .resnetDownsampleBlock2D, .downEncoderBlock2D, .attnDownEncoderBlock2D,
    ]
    public var rawValue: String {
        switch self {
        case .crossAttnDownBlock2D: return "CrossAttnDownBlock2D"
        case .downBlock2D: return "DownBlock2D"
        case .attnDownBlock2D: return "AttnDownBlock2D"
        case .resnetDownsampleBlock2D: return "ResnetDownsampleBlock2D"
        case .downEncoderBlock2D: return "DownEncoderBlock2D"
        case .attnDownEncoderBlock2D: return "AttnDownEncoderBlock2D"
        case .other(let name): return name
        }
    }

    public var attention: BlockAttention? {
        switch self {
        case .crossAttnDownBlock2D: return .crossAttention
        case .attnDownBlock2D, .attnDownEncoderBlock2D: return .spatial
        default: return nil
        }
    }

    /// Whether the block downsamples with a ResnetBlock2D(down=True) instead of a strided conv (get_down_block:
    /// ResnetDownsampleBlock2D always, AttnDownBlock2D with downsample_type "resnet").
    public func downsamplesWithResnet(_ downsampleType: ResampleType) -> Bool {
        self == .resnetDownsampleBlock2D || (self == .attnDownBlock2D && downsampleType == .resnet)
    }
}

public enum UpBlockType: DiffusersBlockName {
    /// UNet2DConditionModel / UNet2DModel blocks.
    case crossAttnUpBlock2D, upBlock2D, attnUpBlock2D, resnetUpsampleBlock2D
    /// The VAE decoder's blocks.
    case upDecoderBlock2D, attnUpDecoderBlock2D
    case other(String)

    public static let implemented: [UpBlockType] = [
        .crossAttnUpBlock2D, .upBlock2D, .attnUpBlock2D, .resnetUpsampleBlock2D, .upDecoderBlock2D, .attnUpDecoderBlock2D,
    ]
    public var rawValue: String {
        switch self {
        case .crossAttnUpBlock2D: return "CrossAttnUpBlock2D"
        case .upBlock2D: return "UpBlock2D"
        case .attnUpBlock2D: return "AttnUpBlock2D"
        case .resnetUpsampleBlock2D: return "ResnetUpsampleBlock2D"
        case .upDecoderBlock2D: return "UpDecoderBlock2D"
        case .attnUpDecoderBlock2D: return "AttnUpDecoderBlock2D"
        case .other(let name): return name
        }
    }

    public var attention: BlockAttention? {
        switch self {
        case .crossAttnUpBlock2D: return .crossAttention
        case .attnUpBlock2D, .attnUpDecoderBlock2D: return .spatial
        default: return nil
        }
    }

    /// Whether the block upsamples with a ResnetBlock2D(up=True) instead of nearest 2x + conv (get_up_block:
    /// ResnetUpsampleBlock2D always, AttnUpBlock2D with upsample_type "resnet").
    public func upsamplesWithResnet(_ upsampleType: ResampleType) -> Bool {
        self == .resnetUpsampleBlock2D || (self == .attnUpBlock2D && upsampleType == .resnet)
    }
}

public enum MidBlockType: DiffusersBlockName {
    case unetMidBlock2DCrossAttn, unetMidBlock2D
    case other(String)

    public static let implemented: [MidBlockType] = [.unetMidBlock2DCrossAttn, .unetMidBlock2D]
    public var rawValue: String {
        switch self {
        case .unetMidBlock2DCrossAttn: return "UNetMidBlock2DCrossAttn"
        case .unetMidBlock2D: return "UNetMidBlock2D"
        case .other(let name): return name
        }
    }

    public var attention: BlockAttention? {
        switch self {
        case .unetMidBlock2DCrossAttn: return .crossAttention
        case .unetMidBlock2D: return .spatial
        case .other: return nil
        }
    }
}

/// UNet2DModel downsample_type / upsample_type: how the Attn* blocks resample.
public enum ResampleType: DiffusersBlockName {
    /// Downsample2D (strided conv) / Upsample2D (nearest 2x + conv).
    case conv
    /// A ResnetBlock2D(down=True / up=True), as CompVis resblock_updown.
    case resnet
    case other(String)

    public static let implemented: [ResampleType] = [.conv, .resnet]
    public var rawValue: String {
        switch self {
        case .conv: return "conv"
        case .resnet: return "resnet"
        case .other(let name): return name
        }
    }
}

/// resnet_time_scale_shift (ResnetBlock2D's time_embedding_norm): how the time embedding enters a resnet.
public enum TimeEmbeddingNorm: DiffusersBlockName {
    /// Added to the hidden states before norm2.
    case `default`
    /// norm2(h) * (1 + scale) + shift (CompVis use_scale_shift_norm).
    case scaleShift
    case other(String)

    public static let implemented: [TimeEmbeddingNorm] = [.default, .scaleShift]
    public var rawValue: String {
        switch self {
        case .default: return "default"
        case .scaleShift: return "scale_shift"
        case .other(let name): return name
        }
    }
}
