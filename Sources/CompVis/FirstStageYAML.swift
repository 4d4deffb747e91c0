// Translation of a CompVis YAML first stage (configs/latent-diffusion/*.yaml, configs/stable-diffusion/*.yaml:
// model.params.first_stage_config with target ldm.models.autoencoder.AutoencoderKL / VQModel(Interface) and its
// ddconfig) into the diffusers configurations, following diffusers' create_vae_diffusers_config_from_ldm
// (loaders/single_file_utils.py), which however ignores ddconfig.attn_resolutions: levels with attention become
// AttnDownEncoderBlock2D / AttnUpDecoderBlock2D here (see blockTypes). Takes the already-parsed YAML as [String: Any].
import Autoencoders
import DiffusersBlocks
import Foundation

/// The first stage a CompVis configuration describes.
public enum FirstStageConfig: Equatable {
    case kl(AutoencoderKLConfig)
    case vq(VQModelConfig)

    public var scalingFactor: Float {
        switch self {
        case .kl(let c): return c.scalingFactor
        case .vq(let c): return c.scalingFactor
        }
    }
    public var blockCount: Int {
        switch self {
        case .kl(let c): return c.blockOutChannels.count
        case .vq(let c): return c.blockOutChannels.count
        }
    }

    /// Accepts the whole YAML ({model: {params: {first_stage_config, scale_factor}}}), `model`, `model.params`, or the
    /// first_stage_config itself. scale_factor is taken from model.params (CompVis default 1.0 when absent, unlike
    /// diffusers' SD default 0.18215); a checkpoint's `scale_factor` buffer (scale_by_std) should override it.
    /// CompVis' Normalize is always GroupNorm(32); `normNumGroups` exists for small test models only.
    public static func fromCompVis(_ yaml: [String: Any], normNumGroups: Int = 32) throws -> FirstStageConfig {
        var node = yaml
        var scale: Float = 1.0
        if let model = node["model"] as? [String: Any] { node = model }
        if let params = node["params"] as? [String: Any], params["first_stage_config"] != nil { node = params }
        if let s = node["scale_factor"] { scale = try float(s, "scale_factor") }
        if let fsc = node["first_stage_config"] as? [String: Any] { node = fsc }
        guard let target = node["target"] as? String else { throw AutoencoderError("first_stage_config: no `target`") }
        guard let params = node["params"] as? [String: Any], let dd = params["ddconfig"] as? [String: Any] else {
            throw AutoencoderError("first_stage_config (\(target)): no params.ddconfig")
        }
        func need(_ key: String) throws -> Any {
            guard let v = dd[key] else { throw AutoencoderError("ddconfig: missing \(key)") }
            return v
        }
        let ch = try int(need("ch"), "ch")
        let mult = try ints(need("ch_mult"), "ch_mult")
        guard !mult.isEmpty else { throw AutoencoderError("ddconfig: ch_mult is empty") }
        let attnRes = try dd["attn_resolutions"].map { try ints($0, "attn_resolutions") } ?? []
        let attnType = (dd["attn_type"] as? String) ?? "vanilla"
        guard attnType == "vanilla" || attnType == "none" else { throw AutoencoderError("ddconfig: unsupported attn_type \(attnType)") }
        for flag in ["give_pre_end", "tanh_out", "use_linear_attn"] {
            if let v = dd[flag], try bool(v, flag) { throw AutoencoderError("ddconfig: \(flag) is not supported") }
        }
        let zChannels = try int(need("z_channels"), "z_channels")
        let doubleZ = try dd["double_z"].map { try bool($0, "double_z") } ?? true
        let inChannels = try int(need("in_channels"), "in_channels"), outCh = try int(need("out_ch"), "out_ch")
        let resBlocks = try int(need("num_res_blocks"), "num_res_blocks")
        let resolution = try dd["resolution"].map { try int($0, "resolution") } ?? 256
        let embedDim = try params["embed_dim"].map { try int($0, "embed_dim") } ?? zChannels
        let blocks = mult.map { ch * $0 }
        let groups = normNumGroups
        // attn_type "none" makes every attention (mid and levels) an nn.Identity.
        let (downTypes, upTypes) = blockTypes(levels: blocks.count, resolution: resolution,
                                              attnResolutions: attnType == "none" ? [] : attnRes)
        // What AutoencoderKL and VQModel share: diffusers' Encoder / Decoder arguments and the latent scaling.
        func shared<C: VAEConfiguration>(_ c: inout C) {
            c.inChannels = inChannels
            c.outChannels = outCh
            c.blockOutChannels = blocks
            c.layersPerBlock = resBlocks
            c.downBlockTypes = downTypes
            c.upBlockTypes = upTypes
            c.latentChannels = zChannels
            c.normNumGroups = groups
            c.sampleSize = resolution
            c.scalingFactor = scale
            c.midBlockAddAttention = attnType == "vanilla"
        }
        if target.hasSuffix("AutoencoderKL") {
            guard doubleZ else { throw AutoencoderError("AutoencoderKL ddconfig: double_z must be true") }
            guard embedDim == zChannels else {
                throw AutoencoderError("AutoencoderKL: embed_dim \(embedDim) != z_channels \(zChannels) has no diffusers equivalent")
            }
            var c = AutoencoderKLConfig()
            shared(&c)
            try c.validate()
            return .kl(c)
        }
        if target.hasSuffix("VQModel") || target.hasSuffix("VQModelInterface") {
            guard !doubleZ else { throw AutoencoderError("VQModel ddconfig: double_z must be false") }
            if let remap = params["remap"], !(remap is NSNull) {
                throw AutoencoderError("VQModel remap (\(remap)): pass the used codes to VQModel(config:remap:) instead")
            }
            var c = VQModelConfig()
            shared(&c)
            c.vqEmbedDim = embedDim
            c.numVqEmbeddings = try int(params["n_embed"] ?? NSNull(), "n_embed")
            try c.validate()
            return .vq(c)
        }
        throw AutoencoderError("first_stage_config target \(target) is not an AutoencoderKL or VQModel")
    }
}

/// diffusers block types for a CompVis Encoder/Decoder: a level has attention when its resolution is in
/// attn_resolutions, the resolution followed exactly as Encoder (from `resolution`, halved after each level) and
/// Decoder (from resolution // 2^(levels-1), doubled after each level) do; decoder up blocks in diffusers order.
func blockTypes(levels n: Int, resolution: Int, attnResolutions: [Int]) -> (down: [DownBlockType], up: [UpBlockType]) {
    var enc: [Bool] = [], res = resolution
    for i in 0..<n {
        enc.append(attnResolutions.contains(res))
        if i != n - 1 { res /= 2 }
    }
    var dec = [Bool](repeating: false, count: n)
    res = resolution / (1 << (n - 1))
    for i in stride(from: n - 1, through: 0, by: -1) {
        dec[i] = attnResolutions.contains(res)
        if i != 0 { res *= 2 }
    }
    return (enc.map { $0 ? .attnDownEncoderBlock2D : .downEncoderBlock2D },
            (0..<n).map { dec[n - 1 - $0] ? .attnUpDecoderBlock2D : .upDecoderBlock2D })
}

private func int(_ v: Any, _ key: String) throws -> Int {
    if let i = v as? Int { return i }
    if let d = v as? Double, d == d.rounded(), abs(d) < 1e15 { return Int(d) }
    if let s = v as? String, let i = Int(s) { return i }
    throw AutoencoderError("ddconfig: \(key) = \(v) is not an integer")
}

private func ints(_ v: Any, _ key: String) throws -> [Int] {
    guard let a = v as? [Any] else { throw AutoencoderError("ddconfig: \(key) = \(v) is not a list") }
    return try a.map { try int($0, key) }
}

private func float(_ v: Any, _ key: String) throws -> Float {
    if let d = v as? Double { return Float(d) }
    if let i = v as? Int { return Float(i) }
    if let s = v as? String, let d = Double(s) { return Float(d) }
    throw AutoencoderError("\(key) = \(v) is not a number")
}

private func bool(_ v: Any, _ key: String) throws -> Bool {
    if let b = v as? Bool { return b }
    if let i = v as? Int, i == 0 || i == 1 { return i == 1 }
    if let s = v as? String, ["true", "false"].contains(s.lowercased()) { return s.lowercased() == "true" }
    throw AutoencoderError("ddconfig: \(key) = \(v) is not a boolean")
}
