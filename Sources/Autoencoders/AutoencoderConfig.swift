// Configurations that decode diffusers' config.json directly: AutoencoderKL (models/autoencoders/autoencoder_kl.py
// __init__ arguments) and VQModel (models/autoencoders/vq_model.py), with diffusers' defaults for absent keys.
// Block types: DownEncoderBlock2D / AttnDownEncoderBlock2D and UpDecoderBlock2D / AttnUpDecoderBlock2D (the Attn
// variants put a single-head attention after every resnet: CompVis attn_resolutions).
// force_upcast and other dtype / loading hints are accepted and ignored.
import DiffusersBlocks
import Foundation
import NeuralNetwork

/// Decodes `sample_size` given either as an integer or as [height, width] (the first entry is used, as diffusers does).
private func decodeSampleSize<K: CodingKey>(_ c: KeyedDecodingContainer<K>, _ key: K, default d: Int) throws -> Int {
    if let n = try? c.decodeIfPresent(Int.self, forKey: key) { return n }
    if let a = try? c.decodeIfPresent([Int].self, forKey: key), let first = a.first { return first }
    guard c.contains(key), try !c.decodeNil(forKey: key) else { return d }
    throw DecodingError.dataCorruptedError(forKey: key, in: c, debugDescription: "sample_size must be an integer or a list of integers")
}

public struct AutoencoderKLConfig: Codable, Equatable, Sendable {
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
        c.layersPerBlock = 2; c.latentChannels = 4; c.sampleSize = 512
        return c
    }

    public init(from decoder: Swift.Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let d = AutoencoderKLConfig()
        inChannels = try c.decode(.inChannels, default: d.inChannels)
        outChannels = try c.decode(.outChannels, default: d.outChannels)
        downBlockTypes = try c.decode(.downBlockTypes, default: d.downBlockTypes)
        upBlockTypes = try c.decode(.upBlockTypes, default: d.upBlockTypes)
        blockOutChannels = try c.decode(.blockOutChannels, default: d.blockOutChannels)
        layersPerBlock = try c.decode(.layersPerBlock, default: d.layersPerBlock)
        actFn = try c.decode(.actFn, default: d.actFn)
        latentChannels = try c.decode(.latentChannels, default: d.latentChannels)
        normNumGroups = try c.decode(.normNumGroups, default: d.normNumGroups)
        sampleSize = try decodeSampleSize(c, .sampleSize, default: d.sampleSize)
        scalingFactor = try c.decode(.scalingFactor, default: d.scalingFactor)
        shiftFactor = try c.decodeIfPresent(Float.self, forKey: .shiftFactor)
        latentsMean = try c.decodeIfPresent([Float].self, forKey: .latentsMean)
        latentsStd = try c.decodeIfPresent([Float].self, forKey: .latentsStd)
        useQuantConv = try c.decode(.useQuantConv, default: d.useQuantConv)
        usePostQuantConv = try c.decode(.usePostQuantConv, default: d.usePostQuantConv)
        midBlockAddAttention = try c.decode(.midBlockAddAttention, default: d.midBlockAddAttention)
    }

    /// Reads a diffusers `config.json`, naming the file in any error.
    public static func load(_ url: URL) throws -> AutoencoderKLConfig {
        let data: Data
        do { data = try Data(contentsOf: url) } catch { throw AutoencoderError("\(url.path): cannot read (\(error.localizedDescription))") }
        do { return try JSONDecoder().decode(AutoencoderKLConfig.self, from: data) }
        catch { throw AutoencoderError("\(url.path): not an AutoencoderKL config (\(error))") }
    }

    public var architecture: VAEArchitecture {
        VAEArchitecture(inChannels: inChannels, outChannels: outChannels, blockOutChannels: blockOutChannels,
                        layersPerBlock: layersPerBlock, latentChannels: latentChannels, normNumGroups: normNumGroups,
                        midBlockAddAttention: midBlockAddAttention,
                        downAttention: downBlockTypes.map { $0 == .attnDownEncoderBlock2D },
                        upAttention: upBlockTypes.map { $0 == .attnUpDecoderBlock2D })
    }

    public func validate() throws {
        try architecture.validate()
        try validateBlocks(down: downBlockTypes, up: upBlockTypes, count: blockOutChannels.count, actFn: actFn)
    }
}

public struct VQModelConfig: Codable, Equatable, Sendable {
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
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let d = VQModelConfig()
        inChannels = try c.decode(.inChannels, default: d.inChannels)
        outChannels = try c.decode(.outChannels, default: d.outChannels)
        downBlockTypes = try c.decode(.downBlockTypes, default: d.downBlockTypes)
        upBlockTypes = try c.decode(.upBlockTypes, default: d.upBlockTypes)
        blockOutChannels = try c.decode(.blockOutChannels, default: d.blockOutChannels)
        layersPerBlock = try c.decode(.layersPerBlock, default: d.layersPerBlock)
        actFn = try c.decode(.actFn, default: d.actFn)
        latentChannels = try c.decode(.latentChannels, default: d.latentChannels)
        sampleSize = try decodeSampleSize(c, .sampleSize, default: d.sampleSize)
        numVqEmbeddings = try c.decode(.numVqEmbeddings, default: d.numVqEmbeddings)
        normNumGroups = try c.decode(.normNumGroups, default: d.normNumGroups)
        vqEmbedDim = try c.decodeIfPresent(Int.self, forKey: .vqEmbedDim)
        scalingFactor = try c.decode(.scalingFactor, default: d.scalingFactor)
        normType = try c.decode(.normType, default: d.normType)
        midBlockAddAttention = try c.decode(.midBlockAddAttention, default: d.midBlockAddAttention)
        lookupFromCodebook = try c.decode(.lookupFromCodebook, default: d.lookupFromCodebook)
    }

    public static func load(_ url: URL) throws -> VQModelConfig {
        let data: Data
        do { data = try Data(contentsOf: url) } catch { throw AutoencoderError("\(url.path): cannot read (\(error.localizedDescription))") }
        do { return try JSONDecoder().decode(VQModelConfig.self, from: data) }
        catch { throw AutoencoderError("\(url.path): not a VQModel config (\(error))") }
    }

    public var embedDim: Int { vqEmbedDim ?? latentChannels }

    public var architecture: VAEArchitecture {
        VAEArchitecture(inChannels: inChannels, outChannels: outChannels, blockOutChannels: blockOutChannels,
                        layersPerBlock: layersPerBlock, latentChannels: latentChannels, normNumGroups: normNumGroups,
                        midBlockAddAttention: midBlockAddAttention,
                        downAttention: downBlockTypes.map { $0 == .attnDownEncoderBlock2D },
                        upAttention: upBlockTypes.map { $0 == .attnUpDecoderBlock2D })
    }

    public func validate() throws {
        try architecture.validate()
        try validateBlocks(down: downBlockTypes, up: upBlockTypes, count: blockOutChannels.count, actFn: actFn)
        guard normType == "group" else { throw AutoencoderError("VQModel norm_type \"\(normType)\" is not supported (only \"group\")") }
        guard numVqEmbeddings > 0, embedDim > 0 else {
            throw AutoencoderError("num_vq_embeddings (\(numVqEmbeddings)) and vq_embed_dim (\(embedDim)) must be positive")
        }
    }
}

func validateBlocks(down: [DownBlockType], up: [UpBlockType], count: Int, actFn: String) throws {
    guard down.count == count, up.count == count else {
        throw AutoencoderError("\(down.count) down_block_types and \(up.count) up_block_types for \(count) block_out_channels")
    }
    let downTypes: [DownBlockType] = [.downEncoderBlock2D, .attnDownEncoderBlock2D]
    let upTypes: [UpBlockType] = [.upDecoderBlock2D, .attnUpDecoderBlock2D]
    if let bad = down.first(where: { !downTypes.contains($0) }) { throw AutoencoderError("unsupported down block type \(bad)") }
    if let bad = up.first(where: { !upTypes.contains($0) }) { throw AutoencoderError("unsupported up block type \(bad)") }
    guard actFn == "silu" || actFn == "swish" else { throw AutoencoderError("unsupported act_fn \(actFn) (only silu)") }
}
