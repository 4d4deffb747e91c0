// Model family detection from tensor names and shapes, as a table of rules. Key layouts follow
// CompVis latent-diffusion / stable-diffusion (ldm/models/diffusion/ddpm.py LatentDiffusion:
// model.diffusion_model.*, first_stage_model.*, cond_stage_model.*; ldm/modules/encoders/modules.py
// FrozenCLIPEmbedder / FrozenOpenCLIPEmbedder / BERTEmbedder / ClassEmbedder), CompVis autoencoders
// (ldm/models/autoencoder.py AutoencoderKL / VQModel) and diffusers model_index.json `_class_name`.
import Checkpoints
import Foundation

public struct ModelFamily: CustomStringConvertible {
    public enum Kind: String {
        case sdxl = "SDXL", sdxlRefiner = "SDXL refiner"
        case sd1 = "SD1.x", sd2 = "SD2.x", sdInpainting = "SD inpainting", sdDepth = "SD2 depth2img"
        case ldmText = "LDM text-to-image (BERT)", ldmClass = "class-conditional LDM", ldmUnconditional = "unconditional LDM"
        case ldmSuperResolution = "LDM super-resolution", ldmOther = "LDM (other conditioning)"
        case autoencoderKL = "autoencoder KL", autoencoderVQ = "autoencoder VQ"
        case diffusersPipeline = "diffusers pipeline", diffusersUNet = "diffusers UNet", diffusersVAE = "diffusers VAE"
        case unknown
    }
    public let kind: Kind
    /// Human-readable details (context dim, in channels, v-prediction caveat...).
    public let details: [String]

    public var description: String { details.isEmpty ? kind.rawValue : kind.rawValue + " (" + details.joined(separator: "; ") + ")" }

    /// What a rule sees: names and shapes.
    public struct Keys {
        public let shapes: [String: [Int]]
        public init(_ shapes: [String: [Int]]) { self.shapes = shapes }
        public func has(_ k: String) -> Bool { shapes[k] != nil }
        public func any(_ prefix: String) -> Bool { shapes.keys.contains { $0.hasPrefix(prefix) } }
        public func dim(_ k: String, _ i: Int) -> Int? { shapes[k].flatMap { i < $0.count ? $0[i] : nil } }
        /// Cross-attention context dim of a CompVis UNet (attn2.to_k weight is [inner, context]).
        public var contextDim: Int? {
            shapes.first { $0.key.hasPrefix("model.diffusion_model.") && $0.key.hasSuffix("attn2.to_k.weight") }?.value.last
        }
        public var unetInChannels: Int? { dim("model.diffusion_model.input_blocks.0.0.weight", 1) }
        /// Width of a FrozenCLIPEmbedder's CLIP text model, under either spelling of its names.
        public var clipWidth: Int? {
            dim("cond_stage_model.transformer.text_model.embeddings.token_embedding.weight", 1)
                ?? dim("cond_stage_model.transformer.embeddings.token_embedding.weight", 1)
        }
        /// Width of a FrozenOpenCLIPEmbedder's text tower.
        public var openCLIPWidth: Int? { dim("cond_stage_model.model.token_embedding.weight", 1) }
        /// The UNet's cross-attention takes what the text encoder makes: the released width, or any width that matches.
        func conditions(_ width: Int?, released: Int) -> Bool {
            guard let c = contextDim else { return false }
            return c == released || c == width
        }
    }

    public struct Rule {
        public let kind: Kind
        public let matches: (Keys) -> Bool
        public let details: (Keys) -> [String]
    }

    static func ctx(_ k: Keys) -> [String] { k.contextDim.map { ["context \($0)"] } ?? [] }
    static func inCh(_ k: Keys) -> [String] { k.unetInChannels.map { ["UNet in channels \($0)"] } ?? [] }

    /// Checked in order; the first match wins.
    public static let rules: [Rule] = [
        // Stability's generative-models layout (sgm DiffusionEngine): conditioner.embedders.N, and the UNet's
        // "text_time" embedding as label_emb.0.{0,2}.
        Rule(kind: .sdxl, matches: { $0.has("model.diffusion_model.label_emb.0.0.weight") && $0.any("conditioner.embedders.0.transformer.") },
             details: { k in ctx(k) + inCh(k) + ["CLIP ViT-L + OpenCLIP bigG text encoders (conditioner.embedders.0/1)",
                                                 "added conditioning input \(k.dim("model.diffusion_model.label_emb.0.0.weight", 1) ?? 0)"] }),
        Rule(kind: .sdxlRefiner, matches: { $0.has("model.diffusion_model.label_emb.0.0.weight") && $0.any("conditioner.embedders.0.model.") },
             details: { k in ctx(k) + inCh(k) + ["OpenCLIP bigG text encoder only (conditioner.embedders.0)",
                                                 "added conditioning input \(k.dim("model.diffusion_model.label_emb.0.0.weight", 1) ?? 0)"] }),
        Rule(kind: .sdInpainting, matches: { $0.unetInChannels == 9 && $0.any("cond_stage_model.") },
             details: { ctx($0) + inCh($0) + ($0.contextDim == 1024 ? ["SD2.x text encoder"] : ["SD1.x text encoder"]) }),
        Rule(kind: .sdDepth, matches: { $0.unetInChannels == 5 && $0.any("depth_model.") }, details: { ctx($0) + inCh($0) }),
        Rule(kind: .sd2, matches: { $0.any("cond_stage_model.model.") && $0.conditions($0.openCLIPWidth, released: 1024) },
             details: { ctx($0) + [$0.openCLIPWidth == 1024 ? "OpenCLIP ViT-H text encoder" : "OpenCLIP text encoder of width \($0.openCLIPWidth ?? 0)",
                                   "v-prediction if it is the 768-v model; eps for 512-base: not visible in weights"] }),
        Rule(kind: .sd1, matches: { $0.clipWidth != nil && !$0.has("cond_stage_model.transformer.token_emb.weight") && $0.conditions($0.clipWidth, released: 768) },
             details: { k in ctx(k) + [k.clipWidth == 768 ? "CLIP ViT-L/14 text encoder" : "CLIP text encoder of width \(k.clipWidth ?? 0)"]
                 + (k.any("cond_stage_model.transformer.text_model.") ? []
                    : ["text encoder names lack \"text_model.\" (transformers 5 spelling; `ldm convert --to compvis` writes the canonical names)"]) }),
        Rule(kind: .ldmText, matches: { $0.has("cond_stage_model.transformer.token_emb.weight") }, details: { ctx($0) + ["BERT-like transformer"] }),
        Rule(kind: .ldmClass, matches: { $0.has("cond_stage_model.embedding.weight") },
             details: { k in (k.dim("cond_stage_model.embedding.weight", 0).map { ["\($0) classes"] } ?? []) + ctx(k) }),
        Rule(kind: .ldmSuperResolution, matches: { $0.any("model.diffusion_model.") && !$0.any("cond_stage_model.") && $0.unetInChannels == 6 },
             details: { inCh($0) + ["low-res image concatenated to the latent"] }),
        Rule(kind: .ldmUnconditional, matches: { $0.any("model.diffusion_model.") && !$0.any("cond_stage_model.") }, details: inCh),
        Rule(kind: .ldmOther, matches: { $0.any("model.diffusion_model.") }, details: { ctx($0) + inCh($0) }),
        Rule(kind: .autoencoderVQ, matches: { $0.has("quantize.embedding.weight") && $0.any("encoder.") },
             details: { k in ["n_embed \(k.dim("quantize.embedding.weight", 0) ?? 0)", "embed_dim \(k.dim("quantize.embedding.weight", 1) ?? 0)"] }),
        Rule(kind: .autoencoderKL, matches: { $0.has("quant_conv.weight") && $0.any("encoder.down.") },
             details: { k in ["embed_dim \((k.dim("quant_conv.weight", 0) ?? 0) / 2)", "2*z_channels \(k.dim("quant_conv.weight", 1) ?? 0)"] }),
        Rule(kind: .diffusersVAE, matches: { $0.has("quant_conv.weight") && $0.any("encoder.down_blocks.") },
             details: { k in ["latent channels \((k.dim("quant_conv.weight", 0) ?? 0) / 2)"] }),
        Rule(kind: .diffusersUNet, matches: { $0.has("conv_in.weight") && $0.any("down_blocks.") },
             details: { k in (k.dim("conv_in.weight", 1).map { ["in channels \($0)"] } ?? [])
                 + (k.shapes.first { $0.key.hasSuffix("attn2.to_k.weight") }?.value.last.map { ["cross-attention \($0)"] } ?? []) }),
    ]

    public static func detect(_ records: [String: TensorRecord]) -> ModelFamily {
        detect(shapes: records.mapValues(\.shape))
    }

    public static func detect(shapes: [String: [Int]]) -> ModelFamily {
        let k = Keys(shapes)
        for r in rules where r.matches(k) { return ModelFamily(kind: r.kind, details: r.details(k)) }
        return ModelFamily(kind: .unknown, details: [])
    }

    /// Diffusers folders: model_index `_class_name`, refined by the UNet config.
    public static func detect(_ folder: DiffusersFolder) -> ModelFamily {
        var d: [String] = []
        if let c = folder.className { d.append(c) }
        if let u = folder.component("unet")?.config {
            if let ca = u["cross_attention_dim"] as? Int { d.append("cross-attention \(ca)" + (ca == 768 ? " (SD1.x-like)" : ca == 1024 ? " (SD2.x-like)" : "")) }
            if let ic = u["in_channels"] as? Int { d.append("UNet in channels \(ic)" + (ic == 9 ? " (inpainting)" : "")) }
        }
        if let p = folder.component("scheduler")?.config?["prediction_type"] as? String { d.append("prediction_type \(p)") }
        if let u = folder.component("unet")?.config, u["addition_embed_type"] as? String == "text_time" {
            if let ctx = u["cross_attention_dim"] as? Int, !d.contains(where: { $0.hasPrefix("cross-attention") }) { d.append("cross-attention \(ctx)") }
            if let t = u["transformer_layers_per_block"] { d.append("transformer depth \(t)") }
            let refiner = folder.modelIndex?["requires_aesthetics_score"] as? Bool == true || folder.component("text_encoder") == nil
            d.append(refiner ? "text_encoder_2 only, aesthetic-score conditioning" : "text_encoder + text_encoder_2")
            return ModelFamily(kind: refiner ? .sdxlRefiner : .sdxl, details: d)
        }
        if folder.modelIndex == nil { return ModelFamily(kind: folder.className?.contains("UNet") == true ? .diffusersUNet :
                                                             folder.className?.contains("Autoencoder") == true ? .diffusersVAE : .unknown, details: d) }
        return ModelFamily(kind: .diffusersPipeline, details: d)
    }
}
