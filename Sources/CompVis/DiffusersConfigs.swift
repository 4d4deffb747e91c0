// config.json for a diffusers folder made from a CompVis file, derived from tensor shapes as
// diffusers/loaders/single_file_utils.py does (create_unet_diffusers_config_from_ldm,
// create_vae_diffusers_config_from_ldm; block_out_channels, layers_per_block, block types, context
// dim, transformer depth, linear projection) and transformers CLIPTextConfig for the text encoder.
// Values the weights do not determine (sample sizes, head counts, group counts) take the defaults of
// those tools and are listed in `defaulted`.
import Checkpoints
import Foundation

public struct DerivedConfig {
    public var config: [String: Any]
    /// "field=value (reason)" for every value not determined by the weights.
    public var defaulted: [String]
}

public enum DiffusersConfigs {
    /// Version of the diffusers converters this mapping follows (diffusers 0.42.1).
    public static let diffusersVersion = "0.42.1"

    static func dim(_ shapes: [String: [Int]], _ key: String, _ i: Int) throws -> Int {
        guard let s = shapes[key], i < s.count else { throw CheckpointError("cannot derive the config: tensor \(key) is missing") }
        return s[i]
    }

    /// UNet2DConditionModel config; `shapes` are diffusers keys (without "unet.").
    /// `sdxl`: an SDXL UNet ("text_time" added conditioning, sample_size 128 = 1024 px / 8).
    public static func unet(_ layout: UNetLayout, shapes: [String: [Int]], sdxl: SDXLConditioningShape? = nil) throws -> DerivedConfig {
        let channels = try (0..<layout.levels).map { try dim(shapes, "down_blocks.\($0).resnets.0.conv1.weight", 0) }
        var depth: [Int] = [], linear = false
        for l in 0..<layout.levels {
            guard layout.attention[l] else {
                depth.append(1)
                continue
            }
            let p = "down_blocks.\(l).attentions.0."
            depth.append(indices(Array(shapes.keys.filter { $0.hasPrefix(p) }.map { String($0.dropFirst(p.count)) }), "transformer_blocks.").count)
            linear = shapes[p + "proj_in.weight"]?.count == 2
        }
        let attnDepths = Set(zip(depth, layout.attention).filter(\.1).map(\.0))
        let context = shapes.first { $0.key.hasSuffix("attn2.to_k.weight") }?.value.last
        var defaulted = ["sample_size=64 (SD1 512 px / 8)", "norm_num_groups=32"]
        let heads: Any
        if linear, channels.allSatisfy({ $0 % 64 == 0 }) {
            heads = channels.map { $0 / 64 }   // SD2 yaml num_head_channels 64
            defaulted.append("attention_head_dim=\(channels.map { $0 / 64 }) (num_head_channels 64, as SD2)")
        } else {
            heads = 8
            defaulted.append("attention_head_dim=8 (num_heads 8, as SD1)")
        }
        var cfg: [String: Any] = [
            "_class_name": "UNet2DConditionModel", "_diffusers_version": diffusersVersion,
            "sample_size": 64, "in_channels": try dim(shapes, "conv_in.weight", 1), "out_channels": try dim(shapes, "conv_out.weight", 0),
            "down_block_types": layout.attention.map { $0 ? "CrossAttnDownBlock2D" : "DownBlock2D" },
            "mid_block_type": layout.midAttention ? "UNetMidBlock2DCrossAttn" : "UNetMidBlock2D",
            "up_block_types": layout.attention.reversed().map { $0 ? "CrossAttnUpBlock2D" : "UpBlock2D" },
            "block_out_channels": channels, "layers_per_block": layout.layersPerBlock,
            "cross_attention_dim": context.map { $0 as Any } ?? NSNull(),
            "attention_head_dim": heads, "use_linear_projection": linear,
            "transformer_layers_per_block": attnDepths.count <= 1 ? (attnDepths.first ?? 1) as Any : depth as Any,
            "norm_num_groups": 32, "act_fn": "silu", "flip_sin_to_cos": true, "freq_shift": 0,
            "center_input_sample": false, "downsample_padding": 1, "mid_block_scale_factor": 1, "norm_eps": 1e-05,
        ]
        if let x = sdxl {
            cfg["addition_embed_type"] = "text_time"
            cfg["addition_time_embed_dim"] = x.additionTimeEmbedDim
            cfg["projection_class_embeddings_input_dim"] = x.projectionInputDim
            cfg["sample_size"] = 128
            defaulted[0] = "sample_size=128 (SDXL 1024 px / 8)"
            defaulted.append("addition_time_embed_dim=\(x.additionTimeEmbedDim) (added-conditioning input \(x.projectionInputDim) = pooled \(x.pooledDim) + \(x.timeIDs) time ids x \(x.additionTimeEmbedDim))")
        }
        return DerivedConfig(config: cfg, defaulted: defaulted)
    }

    /// AutoencoderKL config; `shapes` are diffusers keys (without "vae.").
    /// `sdxl`: SDXL's first stage (sgm yaml scale_factor 0.13025; diffusers force_upcast: it overflows in float16).
    public static func vae(_ layout: VAELayout, shapes: [String: [Int]], sdxl: Bool = false) throws -> DerivedConfig {
        let channels = try (0..<layout.levels).map { try dim(shapes, "encoder.down_blocks.\($0).resnets.0.conv1.weight", 0) }
        var cfg: [String: Any] = [
            "_class_name": "AutoencoderKL", "_diffusers_version": diffusersVersion,
            "in_channels": try dim(shapes, "encoder.conv_in.weight", 1), "out_channels": try dim(shapes, "decoder.conv_out.weight", 0),
            "latent_channels": try dim(shapes, "post_quant_conv.weight", 0),
            "down_block_types": layout.encoderAttention.map { $0 ? "AttnDownEncoderBlock2D" : "DownEncoderBlock2D" },
            "up_block_types": layout.decoderAttention.map { $0 ? "AttnUpDecoderBlock2D" : "UpDecoderBlock2D" },
            "block_out_channels": channels, "layers_per_block": layout.layersPerBlock,
            "act_fn": "silu", "norm_num_groups": 32, "sample_size": 512, "scaling_factor": 0.18215,
        ]
        if sdxl {
            cfg["scaling_factor"] = 0.13025
            cfg["sample_size"] = 1024
            cfg["force_upcast"] = true
            return DerivedConfig(config: cfg, defaulted: ["sample_size=1024", "norm_num_groups=32",
                                                          "scaling_factor=0.13025 (SDXL)", "force_upcast=true"])
        }
        return DerivedConfig(config: cfg, defaulted: ["sample_size=512", "norm_num_groups=32",
                                                      "scaling_factor=0.18215 (LDM_VAE_DEFAULT_SCALING_FACTOR)"])
    }

    /// transformers CLIPTextModelWithProjection config (SDXL text_encoder_2: OpenCLIP bigG, exact GELU); `shapes` are
    /// keys without "text_encoder_2.".
    public static func clipTextWithProjection(shapes: [String: [Int]]) throws -> DerivedConfig {
        var d = try clipText(shapes: shapes)
        d.config["architectures"] = ["CLIPTextModelWithProjection"]
        d.config["hidden_act"] = "gelu"
        d.config["projection_dim"] = try dim(shapes, "text_projection.weight", 0)
        d.defaulted = d.defaulted.filter { !$0.hasPrefix("hidden_act") && !$0.hasPrefix("projection_dim") } + ["hidden_act=gelu (OpenCLIP)"]
        return d
    }

    /// scheduler/scheduler_config.json of stabilityai/stable-diffusion-xl-base-1.0 (EulerDiscreteScheduler).
    public static var sdxlScheduler: [String: Any] {
        ["_class_name": "EulerDiscreteScheduler", "_diffusers_version": diffusersVersion, "num_train_timesteps": 1000,
         "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "interpolation_type": "linear",
         "prediction_type": "epsilon", "sample_max_value": 1.0, "set_alpha_to_one": false, "skip_prk_steps": true,
         "steps_offset": 1, "timestep_spacing": "leading", "use_karras_sigmas": false]
    }

    /// transformers CLIPTextModel config; `shapes` are keys without "text_encoder.".
    /// `openCLIP`: SD2's text encoder (stabilityai/stable-diffusion-2 text_encoder/config.json values).
    public static func clipText(shapes: [String: [Int]], openCLIP: Bool = false) throws -> DerivedConfig {
        // transformers < 5 saves "text_model.embeddings...", transformers 5 saves "embeddings...".
        let p = shapes["text_model.embeddings.token_embedding.weight"] != nil ? "text_model." : ""
        let tok = p + "embeddings.token_embedding.weight"
        let hidden = try dim(shapes, tok, 1)
        let layers = indices(Array(shapes.keys), p + "encoder.layers.").count
        var cfg: [String: Any] = [
            "architectures": ["CLIPTextModel"], "model_type": "clip_text_model",
            "vocab_size": try dim(shapes, tok, 0), "hidden_size": hidden,
            "max_position_embeddings": try dim(shapes, p + "embeddings.position_embedding.weight", 0),
            "intermediate_size": try dim(shapes, p + "encoder.layers.0.mlp.fc1.weight", 0),
            "num_hidden_layers": layers, "num_attention_heads": max(1, hidden / 64),
            // Float fields whose value is whole (dropout 0.0) are left to transformers' defaults: JSONSerialization
            // writes them as integers, which transformers' strict config validation rejects.
            "hidden_act": "quick_gelu", "layer_norm_eps": 1e-05, "projection_dim": 768,
        ]
        var defaulted = ["num_attention_heads=\(max(1, hidden / 64)) (head size 64, as OpenAI CLIP)",
                         "hidden_act=quick_gelu (OpenAI CLIP)", "projection_dim=768"]
        if openCLIP {
            cfg["hidden_act"] = "gelu"
            cfg["projection_dim"] = 512
            cfg["bos_token_id"] = 0
            cfg["eos_token_id"] = 2
            cfg["pad_token_id"] = 1
            return DerivedConfig(config: cfg, defaulted: ["num_attention_heads=\(max(1, hidden / 64)) (head size 64, as OpenCLIP)",
                                                           "hidden_act=gelu, projection_dim=512, bos/eos/pad token ids 0/2/1 (SD2 text_encoder config)"])
        }
        if cfg["vocab_size"] as? Int == 49408 {
            cfg["bos_token_id"] = 49406
            cfg["eos_token_id"] = 49407
            cfg["pad_token_id"] = 1
            defaulted.append("bos/eos/pad token ids 49406/49407/1 (OpenAI CLIP tokenizer)")
        }
        return DerivedConfig(config: cfg, defaulted: defaulted)
    }

    /// diffusers LDMBertConfig, as convert_from_ckpt.py create_ldm_bert_config (d_model = n_embed, encoder_layers =
    /// n_layer, encoder_ffn_dim = 4 n_embed) but read from the shapes; heads and head_dim are x-transformers' defaults
    /// (BERTEmbedder passes neither: 8 heads of DEFAULT_DIM_HEAD 64), checked against the q projection.
    public static func ldmBert(shapes: [String: [Int]]) throws -> DerivedConfig {
        let dModel = try dim(shapes, "model.embed_tokens.weight", 1), inner = try dim(shapes, "model.layers.0.self_attn.q_proj.weight", 0)
        guard inner == 8 * 64 else {
            throw CheckpointError("LDM-BERT attention width \(inner) is not x-transformers' 8 heads x 64 (the head count is not in the weights)")
        }
        let cfg: [String: Any] = [
            "_class_name": "LDMBertModel", "model_type": "ldmbert", "architectures": ["LDMBertModel"],
            "vocab_size": try dim(shapes, "model.embed_tokens.weight", 0),
            "max_position_embeddings": try dim(shapes, "model.embed_positions.weight", 0),
            "encoder_layers": indices(Array(shapes.keys), "model.layers.").count,
            "encoder_ffn_dim": try dim(shapes, "model.layers.0.fc1.weight", 0),
            "encoder_attention_heads": 8, "head_dim": 64, "d_model": dModel, "activation_function": "gelu",
            "pad_token_id": 0,
        ]
        return DerivedConfig(config: cfg, defaulted: ["encoder_attention_heads=8, head_dim=64 (x-transformers defaults)",
                                                      "activation_function=gelu (FeedForward glu=False: nn.GELU)"])
    }

    /// scheduler/scheduler_config.json of CompVis/ldm-text2im-large-256 with steps_offset 1 and "leading" spacing, which
    /// is CompVis' DDIMSampler (make_ddim_timesteps "uniform": range(0, 1000, 1000 // S) + 1); the hub folder leaves
    /// steps_offset at 0, one timestep off CompVis' schedule.
    public static var ldmTextToImageScheduler: [String: Any] {
        ["_class_name": "DDIMScheduler", "_diffusers_version": diffusersVersion, "num_train_timesteps": 1000,
         "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "clip_sample": false,
         "set_alpha_to_one": false, "steps_offset": 1, "timestep_spacing": "leading", "prediction_type": "epsilon"]
    }

    /// tokenizer_config.json for bert-base-uncased's vocab.txt (CompVis BERTTokenizer: BertTokenizerFast, max_length 77).
    public static var bertTokenizerConfig: [String: Any] {
        ["tokenizer_class": "BertTokenizer", "do_lower_case": true, "model_max_length": 77]
    }

    public static func modelIndex(components: [String]) -> [String: Any] {
        let ldmBert = components.contains("bert")
        var idx: [String: Any] = ["_class_name": ldmBert ? "LDMTextToImagePipeline" : "StableDiffusionPipeline",
                                  "_diffusers_version": diffusersVersion]
        if components.contains("text_encoder_2") {
            // StableDiffusionXLPipeline; the refiner (no text_encoder) is StableDiffusionXLImg2ImgPipeline.
            let refiner = !components.contains("text_encoder")
            idx["_class_name"] = refiner ? "StableDiffusionXLImg2ImgPipeline" : "StableDiffusionXLPipeline"
            idx["text_encoder_2"] = ["transformers", "CLIPTextModelWithProjection"]
            idx["force_zeros_for_empty_prompt"] = !refiner
            idx["requires_aesthetics_score"] = refiner
            if components.contains("scheduler") { idx["scheduler"] = ["diffusers", "EulerDiscreteScheduler"] }
            for t in ["tokenizer", "tokenizer_2"] where components.contains(t) { idx[t] = ["transformers", "CLIPTokenizer"] }
        }
        for c in components {
            switch c {
            case "unet": idx[c] = ["diffusers", "UNet2DConditionModel"]
            case "vae", "vqvae": idx[c] = ["diffusers", "AutoencoderKL"]
            case "text_encoder": idx[c] = ["transformers", "CLIPTextModel"]
            case "bert": idx[c] = ["latent_diffusion", "LDMBertModel"]
            case "scheduler": idx[c] = idx[c] ?? ["diffusers", "DDIMScheduler"]
            case "tokenizer": idx[c] = idx[c] ?? ["transformers", "BertTokenizer"]
            default: break
            }
        }
        return idx
    }

    public static func json(_ o: [String: Any]) throws -> Data {
        try JSONSerialization.data(withJSONObject: o, options: [.prettyPrinted, .sortedKeys])
    }
}
