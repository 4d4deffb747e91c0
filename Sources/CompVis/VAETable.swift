// The first stage's rename table: ldm/modules/diffusionmodules/model.py Encoder/Decoder (ldm/models/autoencoder.py
// AutoencoderKL / VQModel, `first_stage_model.` in a LatentDiffusion checkpoint) <-> diffusers AutoencoderKL / VQModel,
// as diffusers loaders/single_file_utils.py convert_ldm_vae_checkpoint, update_vae_resnet_ldm_to_diffusers,
// update_vae_attentions_ldm_to_diffusers and conv_attn_to_linear map it. Levels whose resolution is in the ddconfig's
// attn_resolutions hold an AttnBlock after every resnet (`down.N.attn.M`, `up.N.attn.M`), diffusers'
// AttnDownEncoderBlock2D / AttnUpDecoderBlock2D `attentions.M`. On load the attention's 1x1-conv weights (C, C, 1, 1)
// go into the (C, C) linears as they are (Module.load accepts shapes equal up to 1-sized axes); `ldm convert` reshapes.
import Autoencoders
import Checkpoints
import DiffusersBlocks
import Foundation
import NeuralNetwork

public struct VAELayout: Equatable, Sendable {
    public var levels: Int
    /// Encoder resnets per level (the decoder has one more).
    public var layersPerBlock: Int
    /// Per encoder level (CompVis down.i = diffusers down_blocks.i): attention after every resnet.
    public var encoderAttention: [Bool]
    /// Per decoder block in diffusers order (up_blocks.i = CompVis up.(levels - 1 - i)).
    public var decoderAttention: [Bool]

    public init(levels: Int, layersPerBlock: Int, encoderAttention: [Bool]? = nil, decoderAttention: [Bool]? = nil) {
        self.levels = levels
        self.layersPerBlock = layersPerBlock
        self.encoderAttention = encoderAttention ?? Array(repeating: false, count: levels)
        self.decoderAttention = decoderAttention ?? Array(repeating: false, count: levels)
    }

    /// The layout of the model `config` builds.
    public init(config: some VAEConfiguration) {
        self.init(levels: config.blockOutChannels.count, layersPerBlock: config.layersPerBlock,
                  encoderAttention: config.downBlockTypes.map { $0.attention != nil },
                  decoderAttention: config.upBlockTypes.map { $0.attention != nil })
    }

    /// The rename table, one row per block.
    public var rules: [LayoutRule] {
        var r = ["encoder.conv_in", "encoder.conv_out", "decoder.conv_in", "decoder.conv_out", "quant_conv", "post_quant_conv"]
            .map { LayoutRule($0, $0) }
        for side in ["encoder", "decoder"] {
            r.append(LayoutRule("\(side).norm_out", "\(side).conv_norm_out"))
            r.append(LayoutRule("\(side).mid.block_1", "\(side).mid_block.resnets.0", .vaeResnet))
            r.append(LayoutRule("\(side).mid.block_2", "\(side).mid_block.resnets.1", .vaeResnet))
            r.append(LayoutRule("\(side).mid.attn_1", "\(side).mid_block.attentions.0", .vaeAttention))
        }
        for i in 0..<levels {
            for j in 0..<layersPerBlock {
                r.append(LayoutRule("encoder.down.\(i).block.\(j)", "encoder.down_blocks.\(i).resnets.\(j)", .vaeResnet))
                if encoderAttention[i] {
                    r.append(LayoutRule("encoder.down.\(i).attn.\(j)", "encoder.down_blocks.\(i).attentions.\(j)", .vaeAttention))
                }
            }
            if i < levels - 1 { r.append(LayoutRule("encoder.down.\(i).downsample.conv", "encoder.down_blocks.\(i).downsamplers.0.conv")) }
            let b = levels - 1 - i   // decoder.up is stored in reverse order
            for j in 0...layersPerBlock {
                r.append(LayoutRule("decoder.up.\(b).block.\(j)", "decoder.up_blocks.\(i).resnets.\(j)", .vaeResnet))
                if decoderAttention[i] {
                    r.append(LayoutRule("decoder.up.\(b).attn.\(j)", "decoder.up_blocks.\(i).attentions.\(j)", .vaeAttention))
                }
            }
            if b > 0 { r.append(LayoutRule("decoder.up.\(b).upsample.conv", "decoder.up_blocks.\(i).upsamplers.0.conv")) }
        }
        return r
    }

    public static func detect(compvis keys: [String]) throws -> VAELayout {
        var layout = try make(indices(keys, "encoder.down.").count, indices(keys, "encoder.down.0.block.").count)
        let n = layout.levels
        layout.encoderAttention = (0..<n).map { i in keys.contains { $0.hasPrefix("encoder.down.\(i).attn.") } }
        layout.decoderAttention = (0..<n).map { i in keys.contains { $0.hasPrefix("decoder.up.\(n - 1 - i).attn.") } }
        return layout
    }

    public static func detect(diffusers keys: [String]) throws -> VAELayout {
        var layout = try make(indices(keys, "encoder.down_blocks.").count, indices(keys, "encoder.down_blocks.0.resnets.").count)
        layout.encoderAttention = (0..<layout.levels).map { i in keys.contains { $0.hasPrefix("encoder.down_blocks.\(i).attentions.") } }
        layout.decoderAttention = (0..<layout.levels).map { i in keys.contains { $0.hasPrefix("decoder.up_blocks.\(i).attentions.") } }
        return layout
    }

    static func make(_ levels: Int, _ L: Int) throws -> VAELayout {
        guard levels >= 1, L >= 1 else { throw CheckpointError("VAE: no encoder down-block resnets found") }
        return VAELayout(levels: levels, layersPerBlock: L)
    }

    /// Prefixes under which latent-diffusion / stable-diffusion checkpoints store the first stage (diffusers LDM_VAE_KEYS).
    public static let checkpointPrefixes = ["first_stage_model.", "vae."]

    /// The prefix the records use for the first stage: "first_stage_model." / "vae." when present, else "" (a bare
    /// first-stage checkpoint such as the model zoo's kl-f8/model.ckpt, whose `loss.*` keys are then reported unexpected).
    public static func detectPrefix(_ keys: some Sequence<String>) -> String {
        var found = Set<String>()
        for k in keys {
            for p in checkpointPrefixes where k.hasPrefix(p) { found.insert(p) }
        }
        return checkpointPrefixes.last { found.contains($0) } ?? ""
    }

    /// The first-stage records under `prefix` (detected unless given) renamed by the table; names no row covers (the
    /// VQ codebook `quantize.*`, a bare checkpoint's `loss.*`) keep their name without the prefix.
    public func map(_ records: [String: TensorRecord], prefix: String? = nil) -> [String: TensorRecord] {
        let p = prefix ?? Self.detectPrefix(records.keys)
        let table = ComponentMapping(compvisPrefix: p, component: "vae", rules: rules)
        var out: [String: TensorRecord] = [:]
        for (key, r) in records where key.hasPrefix(p) {
            let k = String(key.dropFirst(p.count))
            out[table.toDiffusers(k, shape: r.shape)?.0 ?? k] = r
        }
        return out
    }
}

/// AutoencoderKL and VQModel as CompVis loading sees them: a first stage with its configuration and load report.
public protocol CompVisFirstStage: Module {
    associatedtype Config: VAEConfiguration
    var config: Config { get }
    var loadReport: LoadReport? { get set }
}

extension AutoencoderKL: CompVisFirstStage {}
extension VQModel: CompVisFirstStage {}

extension CompVisFirstStage {
    /// Loads CompVis-named weights (the VAE table for this model's layout; prefix detected unless given) into this
    /// model; returns the load report.
    @discardableResult
    public func loadCompVis(_ records: [String: TensorRecord], prefix: String? = nil) throws -> LoadReport {
        let report = try load(VAELayout(config: config).map(records, prefix: prefix), component: "first_stage_model")
        loadReport = report
        return report
    }
}

extension FirstStageModel {
    /// A CompVis checkpoint's records (full LatentDiffusion with `first_stage_model.` keys, or a bare first stage)
    /// with the first stage its YAML describes (FirstStageConfig.fromCompVis). A `scale_factor` buffer in the
    /// checkpoint (scale_by_std) overrides the YAML's.
    public static func loadCompVis(records: [String: TensorRecord], config: FirstStageConfig) throws -> (model: FirstStageModel, report: LoadReport) {
        let prefix = VAELayout.detectPrefix(records.keys)
        guard records.keys.contains(where: { $0.hasPrefix(prefix) }) else {
            throw AutoencoderError("the checkpoint has no first-stage weights (no encoder.* / decoder.* keys, with or without first_stage_model.)")
        }
        var scale: Float?
        if let r = records["scale_factor"], r.elementCount == 1, let v = try r.floats().first { scale = v }
        switch config {
        case .kl(var c):
            if let scale { c.scalingFactor = scale }
            let m = try AutoencoderKL(config: c)
            return (.kl(m), try m.loadCompVis(records, prefix: prefix))
        case .vq(var c):
            if let scale { c.scalingFactor = scale }
            let m = try VQModel(config: c)
            return (.vq(m), try m.loadCompVis(records, prefix: prefix))
        }
    }

    /// `loadCompVis(records:config:)` with the first stage of a parsed CompVis YAML.
    public static func loadCompVis(records: [String: TensorRecord], yaml: [String: Any],
                                   normNumGroups: Int = 32) throws -> (model: FirstStageModel, report: LoadReport) {
        try loadCompVis(records: records, config: FirstStageConfig.fromCompVis(yaml, normNumGroups: normNumGroups))
    }

    public static func loadCompVis(checkpoint: URL, yaml: [String: Any], normNumGroups: Int = 32) throws -> (model: FirstStageModel, report: LoadReport) {
        try loadCompVis(records: CheckpointFile.open(checkpoint).tensors, yaml: yaml, normNumGroups: normNumGroups)
    }
}
