// The tables of a whole CompVis LatentDiffusion checkpoint (ldm/models/diffusion/ddpm.py: model.diffusion_model.*,
// first_stage_model.*, cond_stage_model.*) as diffusers components (unet/, vae/ or vqvae/, text_encoder/, bert/):
// the per-component tables of UNetTable.swift, VAETable.swift, BERTTable.swift and the CLIP text model's identity
// table (SD1's FrozenCLIPEmbedder names are transformers' CLIPTextModel names), applied in both directions.
// SDXL's sgm files (generative-models DiffusionEngine: model.diffusion_model.*, first_stage_model.*,
// conditioner.embedders.N.*) use the same UNet and VAE tables (label_emb.0 as the "text_time" MLP), CLIP ViT-L under
// conditioner.embedders.0.transformer. and OpenCLIP bigG (OpenCLIPTable.swift) as text_encoder_2.
import Checkpoints
import Conditioning
import Foundation

/// A Stable Diffusion style pipeline: UNet, KL autoencoder, CLIP text encoder (SD1 naming).
public struct PipelineLayout: Sendable {
    public var unet: UNetLayout?
    public var vae: VAELayout?
    public var textEncoder: Bool
    /// The text_encoder component came from SD2's OpenCLIP (cond_stage_model.model.*, OpenCLIPTable.swift).
    public var openCLIPTextEncoder = false
    /// Where the CLIP text model (text_encoder) sits: SD1's cond_stage_model.transformer. or SDXL's
    /// conditioner.embedders.0.transformer.
    public var textEncoderPrefix = CLIPTable.compvisPrefix
    /// The OpenCLIP text tower, converted by OpenCLIPTable.swift rather than by rows: SD2 (text_encoder), SDXL base
    /// or refiner (text_encoder_2).
    public var openCLIP: OpenCLIPTower?
    /// An SDXL layout (sgm names <-> StableDiffusionXLPipeline components); `isSDXLRefiner`: OpenCLIP bigG only.
    public var isSDXL: Bool { openCLIP?.component == "text_encoder_2" || unet?.classEmbedding == .textTime }
    public var isSDXLRefiner: Bool { openCLIP == .sdxlRefiner }
    /// LDM-BERT text-to-image (CompVis BERTEmbedder <-> diffusers LDMTextToImagePipeline): the text encoder is the
    /// `bert` component and the first stage is named `vqvae` (an AutoencoderKL there).
    public var bert: BERTLayout?
    public var vaeComponent: String { bert != nil ? "vqvae" : "vae" }

    public static let unetPrefix = CompVisUNetKeyMap.compVisPrefix
    public static let vaePrefix = "first_stage_model."
    public static let clipPrefix = CLIPTable.compvisPrefix

    public init(unet: UNetLayout?, vae: VAELayout?, textEncoder: Bool) {
        self.unet = unet
        self.vae = vae
        self.textEncoder = textEncoder
    }

    public var components: [ComponentMapping] {
        var c: [ComponentMapping] = []
        if let unet { c.append(ComponentMapping(compvisPrefix: Self.unetPrefix, component: "unet", rules: unet.rules)) }
        if let vae { c.append(ComponentMapping(compvisPrefix: Self.vaePrefix, component: vaeComponent, rules: vae.rules)) }
        if let bert { c.append(bert.mapping) }
        if textEncoder { c.append(ComponentMapping(compvisPrefix: textEncoderPrefix, component: "text_encoder", rules: nil)) }
        return c
    }

    static func stripped(_ names: [String], _ prefix: String) -> [String] {
        names.filter { $0.hasPrefix(prefix) }.map { String($0.dropFirst(prefix.count)) }
    }

    /// sgm (SDXL) names: GeneralConditioner embedders.
    public static let sgmConditionerPrefix = "conditioner.embedders."

    /// From CompVis names ("model.diffusion_model.*", "first_stage_model.*", "cond_stage_model.transformer.*"), or
    /// sgm names (SDXL: "conditioner.embedders.N.*").
    public static func detect(compvis names: [String]) throws -> PipelineLayout {
        let sgm = names.contains { $0.hasPrefix(sgmConditionerPrefix) }
        let clip = sgm ? CLIPTable.sdxlPrefix : clipPrefix
        let u = stripped(names, unetPrefix), v = stripped(names, vaePrefix), t = stripped(names, clip)
        let isBERT = !sgm && BERTLayout.isBERTEmbedder(compvis: t)
        var layout = PipelineLayout(unet: u.isEmpty ? nil : try UNetLayout.detect(compvis: u, textTime: sgm),
                                    vae: v.isEmpty ? nil : try VAELayout.detect(compvis: v),
                                    textEncoder: !t.isEmpty && !isBERT)
        layout.textEncoderPrefix = clip
        if isBERT { layout.bert = try BERTLayout.detect(compvis: t) }
        if sgm {
            layout.openCLIP = [OpenCLIPTower.sdxl, .sdxlRefiner].first { t in names.contains { $0.hasPrefix(t.prefix) } }
        } else if !layout.textEncoder && names.contains(where: { $0.hasPrefix(OpenCLIPTower.sd2.prefix) }) {
            layout.openCLIP = .sd2
        }
        return layout
    }

    /// From diffusers names "<component>.<key>" (unet., vae., text_encoder.).
    public static func detect(diffusers names: [String]) throws -> PipelineLayout {
        let b = stripped(names, "bert.")
        let u = stripped(names, "unet."), v = stripped(names, b.isEmpty ? "vae." : "vqvae.")
        var layout = PipelineLayout(unet: u.isEmpty ? nil : try UNetLayout.detect(diffusers: u),
                                    vae: v.isEmpty ? nil : try VAELayout.detect(diffusers: v),
                                    textEncoder: names.contains { $0.hasPrefix("text_encoder.") })
        if !b.isEmpty { layout.bert = try BERTLayout.detect(diffusers: b) }
        if names.contains(where: { $0.hasPrefix("text_encoder_2.") }) {
            layout.textEncoderPrefix = CLIPTable.sdxlPrefix
            layout.openCLIP = layout.textEncoder ? .sdxl : .sdxlRefiner
        }
        return layout
    }

    /// CompVis name -> (component, diffusers key, shape); nil when no rule covers it.
    public func toDiffusers(_ name: String, shape: [Int]) -> (component: String, key: String, shape: [Int])? {
        for c in components where name.hasPrefix(c.compvisPrefix) {
            if let (k, s) = c.toDiffusers(String(name.dropFirst(c.compvisPrefix.count)), shape: shape) { return (c.component, k, s) }
        }
        return nil
    }

    /// (component, diffusers key) -> CompVis name and shape; nil when no rule covers it.
    public func toCompVis(component: String, key: String, shape: [Int]) -> (name: String, shape: [Int])? {
        guard let c = components.first(where: { $0.component == component }),
              let (k, s) = c.toCompVis(key, shape: shape) else { return nil }
        return (c.compvisPrefix + k, s)
    }
}
