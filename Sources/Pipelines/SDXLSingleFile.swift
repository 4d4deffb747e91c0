// SDXL single-file checkpoints (Stability's generative-models / sgm layout: model.diffusion_model.* with label_emb.0 as
// the "text_time" MLP, first_stage_model.*, conditioner.embedders.0.transformer.* (CLIP ViT-L) and
// conditioner.embedders.1.model.* (OpenCLIP bigG); the refiner: conditioner.embedders.0.model.* only) loaded as the
// StableDiffusionXLPipeline components, as diffusers' StableDiffusionXLPipeline.from_single_file does: names through
// the CompVis tables (Sources/CompVis: UNetTable, VAETable, CLIPTable, OpenCLIPTable via Converter.compvisToDiffusers),
// configs either from a diffusers folder (`from_single_file(config=FOLDER)`: its unet/vae/text encoder configs,
// tokenizers, scheduler and model_index flags) or derived from the shapes (DiffusersConfigs, SDXLConditioningShape:
// SDXL's defaults for what the weights do not pin), the shipped OpenAI CLIP vocabulary for both tokenizers.
// Every weight is loaded strictly (missing or mis-shaped weights fail).
import Autoencoders
import Checkpoints
import CompVis
import Conditioning
import Diffusion
import Foundation
import Tokenizers
import UNetModels

extension ModelBundle {
    /// Whether `tensors` are an sgm (SDXL) checkpoint: GeneralConditioner embedders.
    public static func isSDXLSingleFile(_ tensors: [String: TensorRecord]) -> Bool {
        tensors.keys.contains { $0.hasPrefix(PipelineLayout.sgmConditionerPrefix) }
    }

    /// A single file whose architecture, tokenizers and scheduler come from a diffusers folder of the same model
    /// (diffusers' `from_single_file(path, config=folder)`); only SDXL single files take one.
    public static func load(_ url: URL, diffusersConfig folder: URL) throws -> ModelBundle {
        guard !DiffusersFolder.isFolder(url) else { throw PipelineError("\(url.path): a diffusers config folder is for single-file checkpoints") }
        let config: DiffusersFolder
        do { config = try DiffusersFolder(url: folder) } catch {
            throw PipelineError.unreadableModel(folder.path, "not a diffusers folder (\(error))")
        }
        let file = try CheckpointFile.open(url)
        guard isSDXLSingleFile(file.tensors) else {
            throw PipelineError("\(url.path): a diffusers config folder is only used with SDXL single files (conditioner.embedders.*)")
        }
        return try loadSDXLSingleFile(file, url: url, config: config)
    }

    /// The SDXL pipeline of an sgm single file; `config`: the diffusers folder whose configs are used (nil: derived).
    static func loadSDXLSingleFile(_ file: CheckpointFile, url: URL, config folder: DiffusersFolder?) throws -> ModelBundle {
        let (layout, components, _) = try Converter.compvisToDiffusers(file.tensors)
        guard layout.isSDXL, let unetLayout = layout.unet, let unetTensors = components["unet"] else {
            throw PipelineError.invalidModel(url.path, "no SDXL UNet weights (model.diffusion_model.* with label_emb.0)")
        }
        guard let vaeLayout = layout.vae, let vaeTensors = components["vae"] else {
            throw PipelineError.invalidModel(url.path, "no VAE weights (first_stage_model.*)")
        }
        guard let te2Tensors = components["text_encoder_2"] else {
            throw PipelineError.invalidModel(url.path, "no OpenCLIP text encoder (conditioner.embedders.1.model.*, or .0.model.* for the refiner)")
        }
        let refiner = layout.isSDXLRefiner
        if let folder, folder.component("text_encoder_2") == nil || folder.component("unet")?.config == nil {
            throw PipelineError.invalidModel(folder.url.path, "not an SDXL diffusers folder (needs unet/config.json and text_encoder_2/)")
        }
        func configData(_ component: String) -> Data? { folder?.component(component)?.configData }

        let te2Records = try records(te2Tensors)
        let unetRecords = try records(unetTensors)
        let unetData: Data
        if let d = configData("unet") {
            unetData = d
        } else {
            let sdxl = try SDXLConditioningShape(unet: unetRecords.mapValues(\.shape), pooledDim: te2Records["text_projection.weight"]?.shape.first,
                                                 refiner: refiner)
            let cfg = try DiffusersConfigs.unet(unetLayout, shapes: unetRecords.mapValues(\.shape), sdxl: sdxl)
            try checkGroups(cfg.config, what: "UNet")
            unetData = try DiffusersConfigs.json(cfg.config)
        }
        let unet = try UNet2DConditionModel(configData: unetData)
        guard unet.config.usesTextTimeEmbedding else {
            throw PipelineError.invalidModel(url.path, "the UNet config is not SDXL's (addition_embed_type text_time)")
        }
        try unet.load(unetRecords, component: "unet")

        let vaeRecords = try records(vaeTensors)
        let vaeData: Data
        if let d = configData("vae") {
            vaeData = d
        } else {
            let cfg = try DiffusersConfigs.vae(vaeLayout, shapes: vaeRecords.mapValues(\.shape), sdxl: true).config
            try checkGroups(cfg, what: "VAE")
            vaeData = try DiffusersConfigs.json(cfg)
        }
        let vaeConfig: AutoencoderKLConfig
        do { vaeConfig = try JSONDecoder().decode(AutoencoderKLConfig.self, from: vaeData) } catch {
            throw PipelineError.invalidModel(url.path, "the VAE config is not an AutoencoderKL config (\(error))")
        }
        let vae = try AutoencoderKL(config: vaeConfig)
        try vae.load(vaeRecords, component: "vae")

        var encoder: CLIPTextModel?, tokenizer: CLIPTokenizer?
        if let t = components["text_encoder"] {
            let recs = try records(t)
            let model = try configData("text_encoder").map { try CLIPTextModel(configData: $0) }
                ?? CLIPTextModel(config: .derived(fromCLIPRecords: recs, hiddenAct: "quick_gelu", what: "SDXL CLIP text encoder"))
            try model.loadWeights(recs)
            encoder = model
            tokenizer = try folder?.component("tokenizer").map { try CLIPTokenizer(folder: $0.folder) } ?? .openCLIPDefault()
        } else if !refiner {
            throw PipelineError.invalidModel(url.path, "no CLIP text encoder (conditioner.embedders.0.transformer.*)")
        }
        let encoder2: CLIPTextModelWithProjection
        if let d = configData("text_encoder_2") {
            encoder2 = try CLIPTextModelWithProjection(configData: d)
        } else {
            guard let proj = te2Records["text_projection.weight"]?.shape.first else {
                throw PipelineError.invalidModel(url.path, "the OpenCLIP text encoder has no text_projection")
            }
            encoder2 = try CLIPTextModelWithProjection(
                config: .derived(fromCLIPRecords: te2Records.filter { $0.key != "text_projection.weight" }, hiddenAct: "gelu",
                                 what: "SDXL OpenCLIP text encoder"), projectionDim: proj)
        }
        try encoder2.load(CLIPTextModel.normalizedKeys(te2Records), component: "text_encoder_2")
        let tokenizer2 = try folder?.component("tokenizer_2").map { try CLIPTokenizer(folder: $0.folder) } ?? .openCLIPDefault(padToken: "!")

        let schedulerConfig: SchedulerConfig
        if let s = folder?.component("scheduler")?.configURL {
            schedulerConfig = try SchedulerConfig.load(contentsOf: s)
        } else {
            schedulerConfig = try JSONDecoder().decode(SchedulerConfig.self, from: DiffusersConfigs.json(DiffusersConfigs.sdxlScheduler))
        }
        let sample = folder?.component("unet")?.config.flatMap { sampleSize($0["sample_size"]) } ?? 128
        let bundle = ModelBundle(url: url, unet: unet, firstStage: .kl(vae), textEncoder: encoder, tokenizer: tokenizer,
                                 schedulerConfig: schedulerConfig, sampleSize: sample)
        bundle.textEncoder2 = encoder2
        bundle.tokenizer2 = tokenizer2
        bundle.forceZerosForEmptyPrompt = folder?.modelIndex?["force_zeros_for_empty_prompt"] as? Bool ?? !refiner
        bundle.requiresAestheticsScore = folder?.modelIndex?["requires_aesthetics_score"] as? Bool ?? refiner
        bundle.pipelineClass = folder?.className ?? (refiner ? "StableDiffusionXLImg2ImgPipeline" : "StableDiffusionXLPipeline")
        return bundle
    }
}
