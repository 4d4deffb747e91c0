// CompVis first-stage names (ldm/modules/diffusionmodules/model.py Encoder/Decoder, ldm/models/autoencoder.py) ->
// diffusers names, as diffusers' converter maps them (loaders/single_file_utils.py convert_ldm_vae_checkpoint,
// update_vae_resnet_ldm_to_diffusers, update_vae_attentions_ldm_to_diffusers, conv_attn_to_linear). The attention's
// 1x1-conv weights (C, C, 1, 1) load into the (C, C) linears because Module.load accepts shapes equal up to 1-sized axes.
import Checkpoints
import NeuralNetwork

public enum CompVisVAEKeys {
    /// Prefixes under which latent-diffusion / stable-diffusion checkpoints store the first stage (diffusers LDM_VAE_KEYS).
    public static let checkpointPrefixes = ["first_stage_model.", "vae."]

    /// The prefix the records use for the first stage: "first_stage_model." / "vae." when present, else "" (a bare
    /// first-stage checkpoint such as the model zoo's kl-f8/model.ckpt, whose `loss.*` keys are then reported unexpected).
    public static func detectPrefix(_ keys: some Sequence<String>) -> String {
        var found = Set<String>()
        for k in keys { for p in checkpointPrefixes where k.hasPrefix(p) { found.insert(p) } }
        return checkpointPrefixes.last { found.contains($0) } ?? ""
    }

    /// Rules mapping CompVis names to diffusers names for a model with `blockCount` resolution levels (len(ch_mult));
    /// decoder `up.N` becomes `up_blocks.(blockCount - 1 - N)`; level attentions `down.N.attn.M` / `up.N.attn.M`
    /// (attn_resolutions) become `attentions.M` of that block, with the leaves of the mid-block attention.
    public static func rules(blockCount: Int, prefix: String = "first_stage_model.") -> [KeyRule] {
        var r: [KeyRule] = prefix.isEmpty ? [] : [.stripPrefix(prefix)]
        r += [
            .regex(#"^(encoder|decoder)\.norm_out\."#, "$1.conv_norm_out."),
            .regex(#"^encoder\.down\.(\d+)\.block\."#, "encoder.down_blocks.$1.resnets."),
            .regex(#"^encoder\.down\.(\d+)\.downsample\.conv\."#, "encoder.down_blocks.$1.downsamplers.0.conv."),
            .regex(#"^encoder\.down\.(\d+)\.attn\.(\d+)\."#, "encoder.down_blocks.$1.attentions.$2."),
        ]
        for n in 0..<blockCount {
            r.append(.regex(#"^decoder\.up\.\#(n)\.block\."#, "decoder.up_blocks.\(blockCount - 1 - n).resnets."))
            r.append(.regex(#"^decoder\.up\.\#(n)\.attn\."#, "decoder.up_blocks.\(blockCount - 1 - n).attentions."))
            r.append(.regex(#"^decoder\.up\.\#(n)\.upsample\.conv\."#, "decoder.up_blocks.\(blockCount - 1 - n).upsamplers.0.conv."))
        }
        r += [
            .regex(#"^(encoder|decoder)\.mid\.block_1\."#, "$1.mid_block.resnets.0."),
            .regex(#"^(encoder|decoder)\.mid\.block_2\."#, "$1.mid_block.resnets.1."),
            .regex(#"^(encoder|decoder)\.mid\.attn_1\."#, "$1.mid_block.attentions.0."),
            // AttnBlock leaves (mid.attn_1 and the level attentions down.N.attn.M / up.N.attn.M).
            .regex(#"\.attentions\.(\d+)\.norm\."#, ".attentions.$1.group_norm."),
            .regex(#"\.attentions\.(\d+)\.(q|k|v)\."#, ".attentions.$1.to_$2."),
            .regex(#"\.attentions\.(\d+)\.proj_out\."#, ".attentions.$1.to_out.0."),
            .replace(".nin_shortcut.", ".conv_shortcut."),
        ]
        return r
    }

    /// First-stage records of a CompVis checkpoint renamed to diffusers names (prefix detected unless given).
    public static func map(_ records: [String: TensorRecord], blockCount: Int, prefix: String? = nil) -> [String: TensorRecord] {
        mapKeys(records, rules(blockCount: blockCount, prefix: prefix ?? detectPrefix(records.keys)))
    }
}
