// Configurations that decode diffusers' config.json directly: AutoencoderKL (models/autoencoders/autoencoder_kl.py
// __init__ arguments) and VQModel (models/autoencoders/vq_model.py), with diffusers' defaults for absent keys.
// Block types: DownEncoderBlock2D / AttnDownEncoderBlock2D and UpDecoderBlock2D / AttnUpDecoderBlock2D (the Attn
// variants put a single-head attention after every resnet: CompVis attn_resolutions).
// force_upcast and other dtype / loading hints are accepted and ignored.
import DiffusersBlocks
import Foundation
import NeuralNetwork

/// What AutoencoderKLConfig and VQModelConfig share: the arguments of diffusers' Encoder / Decoder (vae.py) and the
/// latent scaling, with the same config.json keys.
public protocol VAEConfiguration: Codable, Equatable, Sendable {
    /// The configuration with diffusers' defaults.
    init()
    var inChannels: Int { get set }
    var outChannels: Int { get set }
    var downBlockTypes: [DownBlockType] { get set }
    var upBlockTypes: [UpBlockType] { get set }
    var blockOutChannels: [Int] { get set }
    var layersPerBlock: Int { get set }
    var actFn: String { get set }
    var latentChannels: Int { get set }
    var normNumGroups: Int { get set }
    var sampleSize: Int { get set }
    var scalingFactor: Float { get set }
    var midBlockAddAttention: Bool { get set }
    /// What the config.json describes, for messages ("an AutoencoderKL config").
    static var configName: String { get }
}

extension VAEConfiguration {
    /// Decodes the shared keys; absent or null ones keep the defaults of `init()`.
    mutating func decodeShared(from decoder: Swift.Decoder) throws {
        let c = try decoder.container(keyedBy: ConfigKey.self)
        inChannels = try c.decode("in_channels", default: inChannels)
        outChannels = try c.decode("out_channels", default: outChannels)
        downBlockTypes = try c.decode("down_block_types", default: downBlockTypes)
        upBlockTypes = try c.decode("up_block_types", default: upBlockTypes)
        blockOutChannels = try c.decode("block_out_channels", default: blockOutChannels)
        layersPerBlock = try c.decode("layers_per_block", default: layersPerBlock)
        actFn = try c.decode("act_fn", default: actFn)
        latentChannels = try c.decode("latent_channels", default: latentChannels)
        normNumGroups = try c.decode("norm_num_groups", default: normNumGroups)
        // sample_size: an integer or [height, width] (the first entry is used, as diffusers does).
        if let n = try? c.decodeIfPresent(Int.self, forKey: "sample_size") {
            sampleSize = n
        } else if let a = try? c.decodeIfPresent([Int].self, forKey: "sample_size"), let first = a.first {
            sampleSize = first
        } else if c.contains("sample_size"), try !c.decodeNil(forKey: "sample_size") {
            throw DecodingError.dataCorruptedError(forKey: "sample_size", in: c, debugDescription: "sample_size must be an integer or a list of integers")
        }
        scalingFactor = try c.decode("scaling_factor", default: scalingFactor)
        midBlockAddAttention = try c.decode("mid_block_add_attention", default: midBlockAddAttention)
    }

    /// Reads a diffusers `config.json`, naming the file in any error.
    public static func load(_ url: URL) throws -> Self {
        let data: Data
        do { data = try Data(contentsOf: url) } catch { throw AutoencoderError("\(url.path): cannot read (\(error.localizedDescription))") }
        do { return try JSONDecoder().decode(Self.self, from: data) }
        catch { throw AutoencoderError("\(url.path): not \(configName) (\(error))") }
    }

    public var architecture: VAEArchitecture {
        VAEArchitecture(inChannels: inChannels, outChannels: outChannels, blockOutChannels: blockOutChannels,
                        layersPerBlock: layersPerBlock, latentChannels: latentChannels, normNumGroups: normNumGroups,
                        midBlockAddAttention: midBlockAddAttention,
                        downAttention: downBlockTypes.map { $0 == .attnDownEncoderBlock2D },
                        upAttention: upBlockTypes.map { $0 == .attnUpDecoderBlock2D })
    }

    /// The checks both configurations need: a buildable architecture, VAE block types, SiLU.
    func validateShared() throws {
        try architecture.validate()
        let count = blockOutChannels.count
        guard downBlockTypes.count == count, upBlockTypes.count == count else {
            throw AutoencoderError("\(downBlockTypes.count) down_block_types and \(upBlockTypes.count) up_block_types for \(count) block_out_channels")
        }
        let downTypes: [DownBlockType] = [.downEncoderBlock2D, .attnDownEncoderBlock2D]
        let upTypes: [UpBlockType] = [.upDecoderBlock2D, .attnUpDecoderBlock2D]
        if let bad = downBlockTypes.first(where: { !downTypes.contains($0) }) { throw AutoencoderError("unsupported down block type \(bad)") }
        if let bad = upBlockTypes.first(where: { !upTypes.contains($0) }) { throw AutoencoderError("unsupported up block type \(bad)") }
        guard actFn == "silu" || actFn == "swish" else { throw AutoencoderError("unsupported act_fn \(actFn) (only silu)") }
    }
}

public struct AutoencoderKLConfig: VAEConfiguration {
    public static let configName = "an AutoencoderKL config"
    public var inChannels = 3
    public var outChannels = 3
    public var downBlockTypes: [DownBlockType] = [.downEncoderBlock2D]
    public var upBlockTypes: [UpBlockType] = [.upDecoderBlock2D]
    public var blockOutChannels = [64]
    public var layersPerBlock = 1
    public var actFn = "silu"
    public var latentChannels = 4
    public var normNumGroups = 32
    public var sampleSize = 32
    /// Latents are multiplied by this before diffusion (0.18215 for Stable Diffusion 1/2).
    public var scalingFactor: Float = 0.18215
    /// Subtracted before scaling when set (SD3 / Flux VAEs).
    public var shiftFactor: Float?
    public var latentsMean: [Float]?
    public var latentsStd: [Float]?
    public var useQuantConv = true
    public var usePostQuantConv = true
    public var midBlockAddAttention = true

    enum CodingKeys: String, CodingKey {
        case inChannels = "in_channels", outChannels = "out_channels", downBlockTypes = "down_block_types"
        case upBlockTypes = "up_block_types", blockOutChannels = "block_out_channels", layersPerBlock = "layers_per_block"
        case actFn = "act_fn", latentChannels = "latent_channels", normNumGroups = "norm_num_groups", sampleSize = "sample_size"
        case scalingFactor = "scaling_factor", shiftFactor = "shift_factor", latentsMean = "latents_mean", latentsStd = "latents_std"
        case useQuantConv = "use_quant_conv", usePostQuantConv = "use_post_quant_conv", midBlockAddAttention = "mid_block_add_attention"
    }

    public init() {}

    /// The diffusers Stable Diffusion 1.x/2.x VAE (stabilityai/sd-vae-ft-mse, runwayml/stable-diffusion-v1-5 vae/).
    public static var stableDiffusion: AutoencoderKLConfig {
        var c = AutoencoderKLConfig()
        c.blockOutChannels = [128, 256, 512, 512]
        c.downBlockTypes = Array(repeating: .downEncoderBlock2D, count: 4)
        c.upBlockTypes = Array(repeating: .upDecoderBlock2D, count: 4)
        c.layersPerBlock = 2
        c.latentChannels = 4
        c.sampleSize = 512
        return c
    }

    public init(from decoder: Swift.Decoder) throws {
        try decodeShared(from: decoder)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        shiftFactor = try c.decodeIfPresent(Float.self, forKey: .shiftFactor)
        latentsMean = try c.decodeIfPresent([Float].self, forKey: .latentsMean)
        latentsStd = try c.decodeIfPresent([Float].self, forKey: .latentsStd)
        useQuantConv = try c.decode(.useQuantConv, default: useQuantConv)
        usePostQuantConv = try c.decode(.usePostQuantConv, default: usePostQuantConv)
    }

    public func validate() throws { try validateShared() }
}

public struct VQModelConfig: VAEConfiguration {
    public static let configName = "a VQModel config"
    public var inChannels = 3
    public var outChannels = 3
    public var downBlockTypes: [DownBlockType] = [.downEncoderBlock2D]
    public var upBlockTypes: [UpBlockType] = [.upDecoderBlock2D]
    public var blockOutChannels = [64]
    public var layersPerBlock = 1
    public var actFn = "silu"
    public var latentChannels = 3
    public var sampleSize = 32
    public var numVqEmbeddings = 256
    public var normNumGroups = 32
    /// Codebook vector size; nil means latent_channels.
    public var vqEmbedDim: Int?
    public var scalingFactor: Float = 0.18215
    /// "group" only ("spatial" is MoVQ's SpatialNorm decoder, not part of latent diffusion).
    public var normType = "group"
    public var midBlockAddAttention = true
    public var lookupFromCodebook = false

    enum CodingKeys: String, CodingKey {
        case inChannels = "in_channels", outChannels = "out_channels", downBlockTypes = "down_block_types"
        case upBlockTypes = "up_block_types", blockOutChannels = "block_out_channels", layersPerBlock = "layers_per_block"
        case actFn = "act_fn", latentChannels = "latent_channels", sampleSize = "sample_size"
        case numVqEmbeddings = "num_vq_embeddings", normNumGroups = "norm_num_groups", vqEmbedDim = "vq_embed_dim"
        case scalingFactor = "scaling_factor", normType = "norm_type", midBlockAddAttention = "mid_block_add_attention"
        case lookupFromCodebook = "lookup_from_codebook"
    }

    public init() {}

    public init(from decoder: Swift.Decoder) throws {
        try decodeShared(from: decoder)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        numVqEmbeddings = try c.decode(.numVqEmbeddings, default: numVqEmbeddings)
        vqEmbedDim = try c.decodeIfPresent(Int.self, forKey: .vqEmbedDim)
        normType = try c.decode(.normType, default: normType)
        lookupFromCodebook = try c.decode(.lookupFromCodebook, default: lookupFromCodebook)
    }

    public var embedDim: Int { vqEmbedDim ?? latentChannels }

    public func validate() throws {
        try validateShared()
        guard normType == "group" else { throw AutoencoderError("VQModel norm_type \"\(normType)\" is not supported (only \"group\")") }
        guard numVqEmbeddings > 0, embedDim > 0 else {
            throw AutoencoderError("num_vq_embeddings (\(numVqEmbeddings)) and vq_embed_dim (\(embedDim)) must be positive")
        }
    }
}
