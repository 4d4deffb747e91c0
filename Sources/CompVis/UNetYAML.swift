import Foundation
import UNetModels

// Translates a CompVis YAML `model.params.unet_config.params` (ldm/modules/diffusionmodules/openaimodel.py `UNetModel`)
// into a diffusers UNet config, as diffusers loaders/single_file_utils.py `create_unet_diffusers_config_from_ldm` does:
// block_out_channels = model_channels * channel_mult; a block has attention when its downsampling factor is in
// attention_resolutions; `attention_head_dim` is the head count of the transformers (diffusers issue #2011): num_heads,
// or channels / num_head_channels when num_heads is -1 (SD 2.x). Without use_spatial_transformer the model is a
// diffusers UNet2DModel with legacy AttentionBlocks, whose `attention_head_dim` is a head dimension; resblock_updown
// (lsun_churches) is expressed with diffusers' resnet resampling blocks (see below).

public enum CompVisUNetConfig {
    /// The diffusers config.json dictionary for `yaml` (the whole parsed file, `model:` or `model.params`).
    public static func diffusersConfig(_ yaml: [String: Any]) throws -> [String: Any] {
        var node = yaml
        if let m = node["model"] as? [String: Any] { node = m }
        if let p = node["params"] as? [String: Any] { node = p }
        guard let uc = node["unet_config"] as? [String: Any] else { throw UNetConfigError("YAML: no model.params.unet_config") }
        if let target = uc["target"] as? String, !target.hasSuffix("openaimodel.UNetModel") {
            throw UNetConfigError("YAML: unet_config target \(target) is not supported (ldm...openaimodel.UNetModel only)")
        }
        guard let p = uc["params"] as? [String: Any] else { throw UNetConfigError("YAML: unet_config has no params") }
        return try diffusersConfig(unetParams: p)
    }

    public static func unetConfig(_ yaml: [String: Any]) throws -> UNetConfig {
        let dict = try diffusersConfig(yaml)
        return try UNetConfig.decode(JSONSerialization.data(withJSONObject: dict, options: [.sortedKeys]))
    }

    /// `unet_config.params` -> diffusers config dictionary.
    public static func diffusersConfig(unetParams p: [String: Any]) throws -> [String: Any] {
        func int(_ key: String) throws -> Int? {
            guard let v = p[key], !(v is NSNull) else { return nil }
            if let i = v as? Int { return i }
            if let d = v as? Double, d == d.rounded() { return Int(d) }
            throw UNetConfigError("YAML unet_config.params.\(key): expected an integer, got \(v)")
        }
        func need(_ key: String) throws -> Int {
            guard let v = try int(key) else { throw UNetConfigError("YAML unet_config.params: missing \(key)") }
            return v
        }
        func ints(_ key: String) throws -> [Int]? {
            guard let v = p[key], !(v is NSNull) else { return nil }
            if let i = v as? Int { return [i] }
            guard let a = v as? [Any] else { throw UNetConfigError("YAML unet_config.params.\(key): expected a list of integers") }
            return try a.map {
                guard let i = $0 as? Int else { throw UNetConfigError("YAML unet_config.params.\(key): \($0) is not an integer") }
                return i
            }
        }
        func bool(_ key: String) throws -> Bool {
            guard let v = p[key], !(v is NSNull) else { return false }
            if let b = v as? Bool { return b }
            throw UNetConfigError("YAML unet_config.params.\(key): expected true or false, got \(v)")
        }
        let resblockUpdown = try bool("resblock_updown")
        if try bool("use_new_attention_order") { throw UNetConfigError("YAML unet_config.params.use_new_attention_order is not supported") }
        if p["num_classes"] is String { throw UNetConfigError("YAML unet_config.params.num_classes \"sequential\" (SDXL/unCLIP ADM input) is not supported") }
        if p["disable_self_attentions"] != nil { throw UNetConfigError("YAML unet_config.params.disable_self_attentions is not supported") }
        if p["num_attention_blocks"] != nil { throw UNetConfigError("YAML unet_config.params.num_attention_blocks is not supported") }
        if try int("dims").map({ $0 != 2 }) == true { throw UNetConfigError("YAML unet_config.params.dims: only 2-d UNets") }

        let modelChannels = try need("model_channels"), inChannels = try need("in_channels"), outChannels = try need("out_channels")
        guard let mult = try ints("channel_mult"), !mult.isEmpty else { throw UNetConfigError("YAML unet_config.params: missing channel_mult") }
        let attnRes = try ints("attention_resolutions") ?? []
        let resBlocks = try ints("num_res_blocks") ?? []
        guard resBlocks.count == 1 || resBlocks.count == mult.count, let firstRes = resBlocks.first else {
            throw UNetConfigError("YAML unet_config.params.num_res_blocks: an integer or one per channel_mult entry")
        }
        let numHeads = try int("num_heads") ?? -1, headChannels = try int("num_head_channels") ?? -1
        guard numHeads != -1 || headChannels != -1 else { throw UNetConfigError("YAML unet_config.params: either num_heads or num_head_channels must be set") }
        let spatial = try bool("use_spatial_transformer")
        let channels = mult.map { modelChannels * $0 }
        guard channels.allSatisfy({ $0 > 0 }) else { throw UNetConfigError("YAML unet_config.params: channels must be positive") }
        let n = channels.count

        // Down blocks at factors 1, 2, 4, ...; up blocks in reverse (create_unet_diffusers_config_from_ldm).
        let factors = (0..<n).map { 1 << $0 }
        let attn = factors.map { attnRes.contains($0) }
        var cfg: [String: Any] = ["in_channels": inChannels, "out_channels": outChannels, "block_out_channels": channels,
                                  "layers_per_block": resBlocks.count == 1 ? firstRes as Any : resBlocks as Any,
                                  "flip_sin_to_cos": true, "freq_shift": 0, "norm_num_groups": 32, "act_fn": "silu",
                                  "downsample_padding": 1,
                                  "resnet_time_scale_shift": try bool("use_scale_shift_norm") ? "scale_shift" : "default"]
        if let classes = try int("num_classes") { cfg["num_class_embeds"] = classes }
        if spatial {
            if resblockUpdown {
                // diffusers' CrossAttnDownBlock2D / CrossAttnUpBlock2D resample with convolutions only.
                throw UNetConfigError("YAML unet_config.params: resblock_updown with use_spatial_transformer has no diffusers UNet2DConditionModel equivalent")
            }
            guard let context = p["context_dim"], !(context is NSNull) else {
                throw UNetConfigError("YAML unet_config.params: use_spatial_transformer needs context_dim")
            }
            let contextDim: Int
            if let c = context as? Int { contextDim = c } else if let c = context as? [Any], let f = c.first as? Int { contextDim = f } else {
                throw UNetConfigError("YAML unet_config.params.context_dim: expected an integer")
            }
            // openaimodel: dim_head = ch // num_heads, or num_head_channels; heads = ch // dim_head.
            let heads = try channels.map { ch -> Int in
                if numHeads != -1 { return numHeads }
                guard ch % headChannels == 0 else { throw UNetConfigError("YAML: \(ch) channels are not a multiple of num_head_channels \(headChannels)") }
                return ch / headChannels
            }
            cfg["_class_name"] = "UNet2DConditionModel"
            cfg["down_block_types"] = attn.map { $0 ? "CrossAttnDownBlock2D" : "DownBlock2D" }
            cfg["up_block_types"] = attn.reversed().map { $0 ? "CrossAttnUpBlock2D" : "UpBlock2D" }
            cfg["mid_block_type"] = "UNetMidBlock2DCrossAttn"
            cfg["cross_attention_dim"] = contextDim
            cfg["attention_head_dim"] = heads
            cfg["use_linear_projection"] = try bool("use_linear_in_transformer")
            cfg["transformer_layers_per_block"] = try ints("transformer_depth").map { $0.count == 1 ? $0[0] as Any : $0 as Any } ?? 1
        } else {
            // Legacy AttentionBlock: head dimension num_head_channels, or ch // num_heads.
            let headDims = try channels.map { ch -> Int in
                if headChannels != -1 { return headChannels }
                guard ch % numHeads == 0 else { throw UNetConfigError("YAML: \(ch) channels cannot be split into \(numHeads) heads") }
                return ch / numHeads
            }
            cfg["_class_name"] = "UNet2DModel"
            // resblock_updown: ResBlock(down/up=True) resamplers, diffusers' ResnetDownsampleBlock2D /
            // ResnetUpsampleBlock2D and AttnDown/UpBlock2D with downsample_type / upsample_type "resnet".
            cfg["down_block_types"] = attn.map { $0 ? "AttnDownBlock2D" : (resblockUpdown ? "ResnetDownsampleBlock2D" : "DownBlock2D") }
            cfg["up_block_types"] = attn.reversed().map { $0 ? "AttnUpBlock2D" : (resblockUpdown ? "ResnetUpsampleBlock2D" : "UpBlock2D") }
            if resblockUpdown {
                cfg["downsample_type"] = "resnet"
                cfg["upsample_type"] = "resnet"
            }
            cfg["mid_block_type"] = "UNetMidBlock2D"
            cfg["add_attention"] = true
            cfg["attention_head_dim"] = headDims
        }
        return cfg
    }
}
