import DiffusersBlocks
import Foundation
import NeuralNetwork

// Configuration of diffusers `UNet2DConditionModel` (models/unets/unet_2d_condition.py) and `UNet2DModel`
// (models/unets/unet_2d.py), decoded straight from their config.json. Options that change the architecture in ways
// this implementation does not cover (other added embeddings than SDXL's "text_time", GLIGEN, fourier time embeddings, ...) are rejected by
// `validate()` with a message naming the key; `upcast_attention` / `upcast_softmax` are no-ops in float32.

public struct UNetConfig: Codable, Sendable, Equatable {
    /// "UNet2DConditionModel" or "UNet2DModel": decides defaults and what `attention_head_dim` means.
    public var className: String
    public var inChannels: Int
    public var outChannels: Int
    public var downBlockTypes: [DownBlockType]
    public var upBlockTypes: [UpBlockType]
    public var midBlockType: MidBlockType?
    public var blockOutChannels: [Int]
    public var layersPerBlock: [Int]
    /// Per down block. In UNet2DConditionModel this is the number of heads of the transformers (diffusers' naming
    /// issue #2011) unless `numAttentionHeads` is given; for legacy attention blocks it is the head dimension.
    public var attentionHeadDim: [Int?]
    public var numAttentionHeads: [Int]?
    public var crossAttentionDim: [Int]?
    public var transformerLayersPerBlock: [Int]
    public var reverseTransformerLayersPerBlock: [Int]?
    public var useLinearProjection: Bool
    public var flipSinToCos: Bool
    public var freqShift: Float
    public var normNumGroups: Int
    public var attnNormNumGroups: Int?
    public var normEps: Float
    public var classEmbedType: String?
    public var numClassEmbeds: Int?
    public var resnetTimeScaleShift: TimeEmbeddingNorm
    public var addAttention: Bool
    public var downsamplePadding: Int
    /// UNet2DModel downsample_type / upsample_type: .conv, or .resnet (AttnDownBlock2D / AttnUpBlock2D resample with
    /// a ResnetBlock2D(down/up=True), as CompVis resblock_updown).
    public var downsampleType: ResampleType
    public var upsampleType: ResampleType
    public var midBlockScaleFactor: Float
    public var actFn: String
    public var timeEmbeddingDim: Int?
    public var timeEmbeddingType: String
    public var convInKernel: Int
    public var convOutKernel: Int
    public var centerInputSample: Bool
    public var upcastAttention: Bool
    /// time_cond_proj_dim: the width of a timestep condition added to the sinusoidal time features through
    /// `time_embedding.cond_proj` (LCM-distilled UNets: the guidance-scale embedding w).
    public var timeCondProjDim: Int?
    /// addition_embed_type: nil, or "text_time" (SDXL: the pooled text embedding concatenated with Fourier features
    /// of the micro-conditioning time ids, through `add_embedding`, added to the time embedding).
    public var additionEmbedType: String?
    /// addition_time_embed_dim: the width of each time id's Fourier features (SDXL 256).
    public var additionTimeEmbedDim: Int?
    /// projection_class_embeddings_input_dim: the input width of `add_embedding` (SDXL base 1280 + 6 * 256 = 2816,
    /// refiner 1280 + 5 * 256 = 2560 with the aesthetic score).
    public var projectionClassEmbeddingsInputDim: Int?
    /// Keys present with non-default values that this implementation does not support (checked by `validate`).
    public var unsupported: [String] = []

    public var isConditional: Bool { className != "UNet2DModel" }
    public var timeEmbedDim: Int { timeEmbeddingDim ?? blockOutChannels[0] * 4 }
    /// SDXL-style micro-conditioning (addition_embed_type "text_time").
    public var usesTextTimeEmbedding: Bool { additionEmbedType == "text_time" }

    enum CodingKeys: String, CodingKey {
        case className = "_class_name", inChannels = "in_channels", outChannels = "out_channels"
        case downBlockTypes = "down_block_types", upBlockTypes = "up_block_types", midBlockType = "mid_block_type"
        case blockOutChannels = "block_out_channels", layersPerBlock = "layers_per_block"
        case attentionHeadDim = "attention_head_dim", numAttentionHeads = "num_attention_heads"
        case crossAttentionDim = "cross_attention_dim", transformerLayersPerBlock = "transformer_layers_per_block"
        case reverseTransformerLayersPerBlock = "reverse_transformer_layers_per_block"
        case useLinearProjection = "use_linear_projection", flipSinToCos = "flip_sin_to_cos", freqShift = "freq_shift"
        case normNumGroups = "norm_num_groups", attnNormNumGroups = "attn_norm_num_groups", normEps = "norm_eps"
        case classEmbedType = "class_embed_type", numClassEmbeds = "num_class_embeds"
        case resnetTimeScaleShift = "resnet_time_scale_shift", addAttention = "add_attention"
        case downsamplePadding = "downsample_padding", downsampleType = "downsample_type", upsampleType = "upsample_type"
        case midBlockScaleFactor = "mid_block_scale_factor", actFn = "act_fn"
        case timeEmbeddingDim = "time_embedding_dim", timeEmbeddingType = "time_embedding_type"
        case convInKernel = "conv_in_kernel", convOutKernel = "conv_out_kernel"
        case centerInputSample = "center_input_sample", upcastAttention = "upcast_attention"
        case timeCondProjDim = "time_cond_proj_dim"
        case additionEmbedType = "addition_embed_type", additionTimeEmbedDim = "addition_time_embed_dim"
        case projectionClassEmbeddingsInputDim = "projection_class_embeddings_input_dim"
    }

    public static func decode(_ data: Data) throws -> UNetConfig {
        do { return try JSONDecoder().decode(UNetConfig.self, from: data) } catch let e as UNetConfigError { throw e } catch {
            throw UNetConfigError("cannot decode config.json: \(error)")
        }
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        className = try c.decodeIfPresent(String.self, forKey: .className)
            ?? ((try? c.decodeNil(forKey: .crossAttentionDim)) == false ? "UNet2DConditionModel" : "UNet2DModel")
        let cond = className != "UNet2DModel"
        inChannels = try c.decode(.inChannels, default: cond ? 4 : 3)
        outChannels = try c.decode(.outChannels, default: cond ? 4 : 3)
        downBlockTypes = try c.decode(.downBlockTypes, default: cond
            ? [.crossAttnDownBlock2D, .crossAttnDownBlock2D, .crossAttnDownBlock2D, .downBlock2D]
            : [.downBlock2D, .attnDownBlock2D, .attnDownBlock2D, .attnDownBlock2D])
        upBlockTypes = try c.decode(.upBlockTypes, default: cond
            ? [.upBlock2D, .crossAttnUpBlock2D, .crossAttnUpBlock2D, .crossAttnUpBlock2D]
            : [.attnUpBlock2D, .attnUpBlock2D, .attnUpBlock2D, .upBlock2D])
        let n = downBlockTypes.count
        // An explicit null mid_block_type means no mid block; an absent one, the class default.
        midBlockType = c.contains(.midBlockType) ? try c.decodeIfPresent(MidBlockType.self, forKey: .midBlockType)
            : (cond ? .unetMidBlock2DCrossAttn : .unetMidBlock2D)
        blockOutChannels = try c.decode(.blockOutChannels, default: cond ? [320, 640, 1280, 1280] : [224, 448, 672, 896])
        func intOrList(_ key: CodingKeys, _ def: Int?) throws -> [Int]? {
            if let v = try? c.decodeIfPresent(Int.self, forKey: key) { return [Int](repeating: v, count: n) }
            if let v = try? c.decodeIfPresent([Int].self, forKey: key) {
                guard v.count == n else { throw UNetConfigError("\(key.rawValue) has \(v.count) entries for \(n) down blocks") }
                return v
            }
            if c.contains(key), (try? c.decodeNil(forKey: key)) != true {
                throw UNetConfigError("\(key.rawValue) must be an integer or a list of integers")
            }
            return def.map { [Int](repeating: $0, count: n) }
        }
        layersPerBlock = try intOrList(.layersPerBlock, 2)!
        if c.contains(.attentionHeadDim), try c.decodeNil(forKey: .attentionHeadDim) {
            attentionHeadDim = [Int?](repeating: nil, count: n)
        } else if let v = try? c.decodeIfPresent([Int?].self, forKey: .attentionHeadDim), v.count == n {
            attentionHeadDim = v
        } else {
            attentionHeadDim = try intOrList(.attentionHeadDim, 8)!
        }
        numAttentionHeads = try intOrList(.numAttentionHeads, nil)
        crossAttentionDim = try intOrList(.crossAttentionDim, cond ? 1280 : nil)
        transformerLayersPerBlock = try intOrList(.transformerLayersPerBlock, 1)!
        reverseTransformerLayersPerBlock = try c.decodeIfPresent([Int].self, forKey: .reverseTransformerLayersPerBlock)
        useLinearProjection = try c.decode(.useLinearProjection, default: false)
        flipSinToCos = try c.decode(.flipSinToCos, default: true)
        freqShift = try c.decode(.freqShift, default: 0)
        normNumGroups = try c.decode(.normNumGroups, default: 32)
        attnNormNumGroups = try c.decodeIfPresent(Int.self, forKey: .attnNormNumGroups)
        normEps = try c.decode(.normEps, default: 1e-5)
        classEmbedType = try c.decodeIfPresent(String.self, forKey: .classEmbedType)
        numClassEmbeds = try c.decodeIfPresent(Int.self, forKey: .numClassEmbeds)
        resnetTimeScaleShift = try c.decode(.resnetTimeScaleShift, default: .default)
        addAttention = try c.decode(.addAttention, default: true)
        downsamplePadding = try c.decode(.downsamplePadding, default: 1)
        downsampleType = try c.decode(.downsampleType, default: .conv)
        upsampleType = try c.decode(.upsampleType, default: .conv)
        midBlockScaleFactor = try c.decode(.midBlockScaleFactor, default: 1)
        actFn = try c.decode(.actFn, default: "silu")
        timeEmbeddingDim = try c.decodeIfPresent(Int.self, forKey: .timeEmbeddingDim)
        timeEmbeddingType = try c.decode(.timeEmbeddingType, default: "positional")
        convInKernel = try c.decode(.convInKernel, default: 3)
        convOutKernel = try c.decode(.convOutKernel, default: 3)
        centerInputSample = try c.decode(.centerInputSample, default: false)
        upcastAttention = try c.decode(.upcastAttention, default: false)
        timeCondProjDim = try c.decodeIfPresent(Int.self, forKey: .timeCondProjDim)
        additionEmbedType = try c.decodeIfPresent(String.self, forKey: .additionEmbedType)
        additionTimeEmbedDim = try c.decodeIfPresent(Int.self, forKey: .additionTimeEmbedDim)
        projectionClassEmbeddingsInputDim = try c.decodeIfPresent(Int.self, forKey: .projectionClassEmbeddingsInputDim)

        let x = try decoder.container(keyedBy: ConfigKey.self)
        for key in ["encoder_hid_dim", "encoder_hid_dim_type", "cross_attention_norm",
                    "timestep_post_act", "time_embedding_act_fn"] {
            let k = ConfigKey(stringValue: key)
            if x.contains(k), (try? x.decodeNil(forKey: k)) == false { unsupported.append(key) }
        }
        for key in ["class_embeddings_concat", "dual_cross_attention", "resnet_skip_time_act", "only_cross_attention"] {
            let k = ConfigKey(stringValue: key)
            if (try? x.decodeIfPresent(Bool.self, forKey: k)) == true { unsupported.append(key) }
            if let v = try? x.decodeIfPresent([Bool].self, forKey: k), v.contains(true) { unsupported.append(key) }
        }
        let checks: [(String, String)] = [("attention_type", "default")]
        for (key, ok) in checks {
            if let v = try? x.decodeIfPresent(String.self, forKey: ConfigKey(stringValue: key)), v != ok { unsupported.append("\(key)=\(v)") }
        }
        if let v = try? x.decodeIfPresent(Float.self, forKey: ConfigKey(stringValue: "resnet_out_scale_factor")), v != 1 {
            unsupported.append("resnet_out_scale_factor")
        }
        try validate()
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(className, forKey: .className)
        try c.encode(inChannels, forKey: .inChannels)
        try c.encode(outChannels, forKey: .outChannels)
        try c.encode(downBlockTypes, forKey: .downBlockTypes)
        try c.encode(upBlockTypes, forKey: .upBlockTypes)
        try c.encode(midBlockType, forKey: .midBlockType)
        try c.encode(blockOutChannels, forKey: .blockOutChannels)
        try c.encode(layersPerBlock, forKey: .layersPerBlock)
        try c.encode(attentionHeadDim, forKey: .attentionHeadDim)
        try c.encodeIfPresent(numAttentionHeads, forKey: .numAttentionHeads)
        try c.encodeIfPresent(crossAttentionDim, forKey: .crossAttentionDim)
        try c.encode(transformerLayersPerBlock, forKey: .transformerLayersPerBlock)
        try c.encodeIfPresent(reverseTransformerLayersPerBlock, forKey: .reverseTransformerLayersPerBlock)
        try c.encode(useLinearProjection, forKey: .useLinearProjection)
        try c.encode(flipSinToCos, forKey: .flipSinToCos)
        try c.encode(freqShift, forKey: .freqShift)
        try c.encode(normNumGroups, forKey: .normNumGroups)
        try c.encodeIfPresent(attnNormNumGroups, forKey: .attnNormNumGroups)
        try c.encode(normEps, forKey: .normEps)
        try c.encodeIfPresent(classEmbedType, forKey: .classEmbedType)
        try c.encodeIfPresent(numClassEmbeds, forKey: .numClassEmbeds)
        try c.encode(resnetTimeScaleShift, forKey: .resnetTimeScaleShift)
        try c.encode(addAttention, forKey: .addAttention)
        try c.encode(downsampleType, forKey: .downsampleType)
        try c.encode(upsampleType, forKey: .upsampleType)
        try c.encode(downsamplePadding, forKey: .downsamplePadding)
        try c.encode(midBlockScaleFactor, forKey: .midBlockScaleFactor)
        try c.encode(actFn, forKey: .actFn)
        try c.encodeIfPresent(timeEmbeddingDim, forKey: .timeEmbeddingDim)
        try c.encode(timeEmbeddingType, forKey: .timeEmbeddingType)
        try c.encode(convInKernel, forKey: .convInKernel)
        try c.encode(convOutKernel, forKey: .convOutKernel)
        try c.encode(centerInputSample, forKey: .centerInputSample)
        try c.encode(upcastAttention, forKey: .upcastAttention)
        try c.encodeIfPresent(timeCondProjDim, forKey: .timeCondProjDim)
        try c.encodeIfPresent(additionEmbedType, forKey: .additionEmbedType)
        try c.encodeIfPresent(additionTimeEmbedDim, forKey: .additionTimeEmbedDim)
        try c.encodeIfPresent(projectionClassEmbeddingsInputDim, forKey: .projectionClassEmbeddingsInputDim)
    }

    /// Throws for configurations outside what `UNet2DConditionModel` here implements.
    public func validate() throws {
        if !unsupported.isEmpty { throw UNetConfigError("unsupported options: " + unsupported.joined(separator: ", ")) }
        let n = downBlockTypes.count
        guard n > 0, blockOutChannels.count == n, upBlockTypes.count == n else {
            throw UNetConfigError("down_block_types (\(n)), up_block_types (\(upBlockTypes.count)) and block_out_channels (\(blockOutChannels.count)) must have the same length > 0")
        }
        for t in downBlockTypes where ![.crossAttnDownBlock2D, .downBlock2D, .attnDownBlock2D, .resnetDownsampleBlock2D].contains(t) {
            throw UNetConfigError("unsupported down block \(t)")
        }
        for t in upBlockTypes where ![.crossAttnUpBlock2D, .upBlock2D, .attnUpBlock2D, .resnetUpsampleBlock2D].contains(t) {
            throw UNetConfigError("unsupported up block \(t)")
        }
        guard ResampleType.implemented.contains(downsampleType), ResampleType.implemented.contains(upsampleType) else {
            throw UNetConfigError("downsample_type \(downsampleType) / upsample_type \(upsampleType) (only conv or resnet)")
        }
        if let m = midBlockType, !MidBlockType.implemented.contains(m) { throw UNetConfigError("unsupported mid block \(m)") }
        guard ["silu", "swish"].contains(actFn) else { throw UNetConfigError("act_fn \(actFn) (only silu)") }
        guard timeEmbeddingType == "positional" else { throw UNetConfigError("time_embedding_type \(timeEmbeddingType) (only positional)") }
        guard TimeEmbeddingNorm.implemented.contains(resnetTimeScaleShift) else { throw UNetConfigError("resnet_time_scale_shift \(resnetTimeScaleShift)") }
        if let t = classEmbedType, t != "timestep" { throw UNetConfigError("class_embed_type \(t) (only null with num_class_embeds, or timestep)") }
        guard convInKernel % 2 == 1, convOutKernel % 2 == 1 else { throw UNetConfigError("conv_in_kernel / conv_out_kernel must be odd") }
        guard normNumGroups > 0, blockOutChannels.allSatisfy({ $0 > 0 && $0 % normNumGroups == 0 }) else {
            throw UNetConfigError("block_out_channels \(blockOutChannels) must be positive multiples of norm_num_groups \(normNumGroups)")
        }
        guard inChannels > 0, outChannels > 0, layersPerBlock.allSatisfy({ $0 > 0 }), transformerLayersPerBlock.allSatisfy({ $0 > 0 }) else {
            throw UNetConfigError("channel and layer counts must be positive")
        }
        if let d = timeCondProjDim, d <= 0 { throw UNetConfigError("time_cond_proj_dim must be positive, got \(d)") }
        if let t = additionEmbedType {
            guard t == "text_time" else { throw UNetConfigError("addition_embed_type \(t) (only text_time)") }
            guard (additionTimeEmbedDim ?? 0) > 0, (projectionClassEmbeddingsInputDim ?? 0) > 0 else {
                throw UNetConfigError("addition_embed_type text_time needs positive addition_time_embed_dim and projection_class_embeddings_input_dim")
            }
        }
        if let r = reverseTransformerLayersPerBlock, r.count != n { throw UNetConfigError("reverse_transformer_layers_per_block needs \(n) entries") }
        let usesCross = downBlockTypes.contains { $0.attention == .crossAttention } || upBlockTypes.contains { $0.attention == .crossAttention }
            || midBlockType == .unetMidBlock2DCrossAttn
        if usesCross && crossAttentionDim == nil { throw UNetConfigError("cross-attention blocks need cross_attention_dim") }
        for i in 0..<n {
            let heads = transformerHeads(i), ch = blockOutChannels[i]
            if (downBlockTypes[i].attention == .crossAttention || upBlockTypes[n - 1 - i].attention == .crossAttention) && (heads <= 0 || ch % heads != 0) {
                throw UNetConfigError("\(ch) channels cannot be split into \(heads) heads (block \(i))")
            }
            let hd = legacyHeadDim(i, channels: ch)
            if (downBlockTypes[i] == .attnDownBlock2D || upBlockTypes[i] == .attnUpBlock2D) && (hd <= 0 || ch % hd != 0) {
                throw UNetConfigError("\(ch) channels cannot be split into heads of \(hd) (block \(i))")
            }
        }
    }

    /// Whether down block `i` downsamples with a ResnetBlock2D(down=True) (only when it downsamples at all).
    public func resnetDownsample(_ i: Int) -> Bool {
        i < blockOutChannels.count - 1 && downBlockTypes[i].downsamplesWithResnet(downsampleType)
    }
    /// Whether up block `i` (diffusers order) upsamples with a ResnetBlock2D(up=True).
    public func resnetUpsample(_ i: Int) -> Bool {
        i < blockOutChannels.count - 1 && upBlockTypes[i].upsamplesWithResnet(upsampleType)
    }

    /// Heads of the transformer blocks at down-block index `i` (diffusers: num_attention_heads or attention_head_dim).
    public func transformerHeads(_ i: Int) -> Int { numAttentionHeads?[i] ?? attentionHeadDim[i] ?? blockOutChannels[i] }
    /// Head dimension of legacy attention blocks at index `i` (attention_head_dim, or the channel count when null).
    public func legacyHeadDim(_ i: Int, channels: Int) -> Int { attentionHeadDim[i] ?? channels }
}
