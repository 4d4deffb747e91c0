// RUN_DIR/pipeline/: a diffusers pipeline folder of the trained model, as diffusers' training examples end with
// pipeline.save_pretrained(output_dir): model_index.json, unet/ (EMA weights when EMA is on), the first stage as
// vae/ (AutoencoderKL) or vqvae/ (VQModel) with config.json's scaling_factor set to the training scale factor
// (scale_by_std measures it; CompVis stores it as the scale_factor buffer), scheduler/scheduler_config.json (DDIM with
// the training betas and prediction type), and for text models text_encoder/ and tokenizer/. `ldm sample` /
// `ldm txt2img` / ModelBundle.load read it directly. A pixel-space run (no first stage) is exported as diffusers'
// DDIMPipeline (unet/ + scheduler/), which `ldm sample` reads too.
import Checkpoints
import Conditioning
import Diffusion
import Foundation
import NeuralNetwork
import TensorCore
import Tokenizers

/// What the pipeline export needs besides the trained modules.
public struct PipelineExportSpec {
    /// The first stage's component folder (config.json + weights) and its class ("AutoencoderKL" or "VQModel");
    /// nil for pixel-space training.
    public var firstStageFolder: URL?
    public var firstStageClass: String?
    public var schedulerConfig: SchedulerConfig
    /// unet.config.sample_size: the latent side at the training image size.
    public var sampleSize: Int

    public init(firstStageFolder: URL?, firstStageClass: String?, schedulerConfig: SchedulerConfig, sampleSize: Int) {
        self.firstStageFolder = firstStageFolder
        self.firstStageClass = firstStageClass
        self.schedulerConfig = schedulerConfig
        self.sampleSize = sampleSize
    }

    /// diffusers' folder name of the first stage.
    public var firstStageName: String? { firstStageClass.map { $0 == "VQModel" ? "vqvae" : "vae" } }
}

extension Trainer {
    public var pipelineURL: URL { runDir.appendingPathComponent("pipeline") }

    /// Writes RUN_DIR/pipeline (replacing an earlier export atomically: built beside it, then renamed). `unetFolder`:
    /// an already written unet/ to copy (else it is written from the model).
    public func exportPipeline(unetFolder: URL? = nil) throws {
        guard let spec = pipelineExport else {
            throw TrainingError("no pipeline export is configured for this trainer")
        }
        if spec.firstStageFolder == nil {
            guard textConditioner == nil else { throw TrainingError("no pipeline export for a pixel-space text-conditioned run (diffusers has no such pipeline): only unet/ is written") }
            guard (scaleFactor ?? options.scaleFactor) == 1 else {
                throw TrainingError("a pixel-space pipeline needs scale factor 1 (the sampler does not rescale pixels); this run used \(scaleFactor ?? options.scaleFactor)")
            }
        }
        let fm = FileManager.default
        let tmp = runDir.appendingPathComponent(".pipeline-\(UUID().uuidString)")
        defer { try? fm.removeItem(at: tmp) }
        try fm.createDirectory(at: tmp, withIntermediateDirectories: true)

        // unet/
        let unetDir = tmp.appendingPathComponent("unet")
        if let unetFolder {
            try fm.createDirectory(at: unetDir, withIntermediateDirectories: true)
            for f in ["config.json", "diffusion_pytorch_model.safetensors"] {
                try fm.copyItem(at: unetFolder.appendingPathComponent(f), to: unetDir.appendingPathComponent(f))
            }
        } else {
            try writeUNet(to: unetDir)
        }
        // vae/ or vqvae/ with the training scale factor.
        if let folder = spec.firstStageFolder, let name = spec.firstStageName {
            let fsDir = tmp.appendingPathComponent(name)
            try copyFolder(folder, to: fsDir)
            let fsConfigURL = fsDir.appendingPathComponent("config.json")
            guard var fsConfig = try JSONSerialization.jsonObject(with: Data(contentsOf: fsConfigURL)) as? [String: Any] else {
                throw TrainingError("\(folder.path)/config.json is not a JSON object")
            }
            fsConfig["scaling_factor"] = Double(scaleFactor ?? options.scaleFactor)
            try writeJSON(fsConfig, to: fsConfigURL)
        }
        // scheduler/
        let schedDir = tmp.appendingPathComponent("scheduler")
        try fm.createDirectory(at: schedDir, withIntermediateDirectories: true)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        try encoder.encode(spec.schedulerConfig).write(to: schedDir.appendingPathComponent("scheduler_config.json"), options: .atomic)

        var index: [String: Any] = [
            "_diffusers_version": "0.30.0",
            "unet": ["diffusers", model.config.className],
            "scheduler": ["diffusers", spec.schedulerConfig.className ?? "DDIMScheduler"],
        ]
        if let name = spec.firstStageName, let cls = spec.firstStageClass { index[name] = ["diffusers", cls] }
        if let text = textConditioner {
            try writeTextEncoder(text, to: tmp.appendingPathComponent("text_encoder"))
            try writeTokenizer(text, to: tmp.appendingPathComponent("tokenizer"))
            index["text_encoder"] = ["transformers", "CLIPTextModel"]
            index["tokenizer"] = ["transformers", "CLIPTokenizer"]
            if spec.firstStageClass == "AutoencoderKL" {
                // StableDiffusionPipeline.save_pretrained with safety_checker=None, feature_extractor=None.
                index["_class_name"] = "StableDiffusionPipeline"
                index["safety_checker"] = [NSNull(), NSNull()]
                index["feature_extractor"] = [NSNull(), NSNull()]
                index["image_encoder"] = [NSNull(), NSNull()]
                index["requires_safety_checker"] = false
            } else {
                index["_class_name"] = "LDMTextToImagePipeline"
            }
        } else if spec.firstStageFolder == nil {
            // diffusers DDIMPipeline (pixel space: unet + scheduler).
            index["_class_name"] = "DDIMPipeline"
        } else {
            // diffusers LDMPipeline (unconditional); a class-conditional UNet2DModel keeps the same layout.
            index["_class_name"] = "LDMPipeline"
        }
        try writeJSON(index, to: tmp.appendingPathComponent("model_index.json"))

        if fm.fileExists(atPath: pipelineURL.path) { try fm.removeItem(at: pipelineURL) }
        try fm.moveItem(at: tmp, to: pipelineURL)
    }

    /// text_encoder/: a trainable encoder's current weights (config.json + model.safetensors in export_dtype), a
    /// frozen one's source folder as it is.
    func writeTextEncoder(_ text: TextConditioner, to dir: URL) throws {
        if !text.trainable, let src = text.sourceFolder { return try copyFolder(src, to: dir) }
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        var config = try JSONSerialization.jsonObject(with: JSONEncoder().encode(text.model.config)) as? [String: Any] ?? [:]
        config["architectures"] = ["CLIPTextModel"]
        config["model_type"] = "clip_text_model"
        config["torch_dtype"] = options.exportDType.rawValue
        config["dropout"] = 0.0
        config["attention_dropout"] = 0.0
        try writeJSON(config, to: dir.appendingPathComponent("config.json"))
        try text.model.save(to: dir.appendingPathComponent("model.safetensors"), dtype: options.exportDType,
                            metadata: ["format": "pt", "step": String(step)])
    }

    /// tokenizer/: the tokenizer folder as it is, or vocab.json + merges.txt (+ configs) of the shipped CLIP vocabulary.
    func writeTokenizer(_ text: TextConditioner, to dir: URL) throws {
        guard text.tokenizerSource == LDMTrainConfig.bundledCLIPTokenizer else {
            return try copyFolder(URL(fileURLWithPath: text.tokenizerSource), to: dir)
        }
        try writeBundledCLIPTokenizer(to: dir, modelMaxLength: text.tokenizer.modelMaxLength)
    }
}

/// Writes the shipped openai CLIP BPE vocabulary as a transformers CLIPTokenizer folder: vocab.json (token -> id),
/// merges.txt ("#version: 0.2" + merges in rank order), special_tokens_map.json and tokenizer_config.json
/// (pad "<|endoftext|>", as openai/clip-vit-large-patch14 and SD 1.x).
public func writeBundledCLIPTokenizer(to dir: URL, modelMaxLength: Int = 77) throws {
    guard let url = CLIPTokenizer.bundledOpenCLIPVocabularyURL else {
        throw TrainingError("the CLIP vocabulary resource is missing from the Tokenizers bundle")
    }
    let (vocab, merges) = try CLIPTokenizer.openCLIPVocabulary(gzipFile: url)
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
    try encoder.encode(vocab).write(to: dir.appendingPathComponent("vocab.json"), options: .atomic)
    var text = "#version: 0.2\n"
    for (a, b) in merges { text += a + " " + b + "\n" }
    try Data(text.utf8).write(to: dir.appendingPathComponent("merges.txt"), options: .atomic)
    let special: [String: Any] = ["bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
                                  "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"]
    try writeJSON(special, to: dir.appendingPathComponent("special_tokens_map.json"))
    var config = special
    config["tokenizer_class"] = "CLIPTokenizer"
    config["model_max_length"] = modelMaxLength
    config["do_lower_case"] = true
    config["errors"] = "replace"
    config["add_prefix_space"] = false
    config["clean_up_tokenization_spaces"] = true
    try writeJSON(config, to: dir.appendingPathComponent("tokenizer_config.json"))
}

/// Copies the files of `src` (recursively) into a new folder `dst`.
func copyFolder(_ src: URL, to dst: URL) throws {
    let fm = FileManager.default
    var isDir: ObjCBool = false
    guard fm.fileExists(atPath: src.path, isDirectory: &isDir), isDir.boolValue else { throw TrainingError("\(src.path) is not a folder") }
    try fm.createDirectory(at: dst.deletingLastPathComponent(), withIntermediateDirectories: true)
    try fm.copyItem(at: src, to: dst)
}
