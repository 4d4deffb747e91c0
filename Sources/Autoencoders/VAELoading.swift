// Loading first-stage weights: a diffusers `vae/` (or `vqvae/`) folder (config.json +
// diffusion_pytorch_model[.fp16].safetensors / .bin, as diffusers ModelMixin.from_pretrained reads it) or a CompVis
// checkpoint (first_stage_model.* records + the YAML's first_stage_config: CompVis/VAETable.swift).
// Every load is strict: missing or mis-shaped weights throw a LoadError listing them; unexpected keys are reported.
import Checkpoints
import Foundation
import NeuralNetwork
import TensorCore

/// A loaded first stage of either kind, with the report of its weight loading.
public enum FirstStageModel {
    case kl(AutoencoderKL)
    case vq(VQModel)

    public var scalingFactor: Float {
        switch self {
        case .kl(let m): return m.config.scalingFactor
        case .vq(let m): return m.config.scalingFactor
        }
    }

    /// diffusers' old attention names (AttentionBlock before diffusers 0.14: query, key, value, proj_attn), which
    /// diffusers' ModelMixin._fix_state_dict_keys_on_load still renames on load; group_norm keeps its name.
    public static let legacyAttentionRules: [KeyRule] = [
        .regex(#"\.attentions\.(\d+)\.query\."#, ".attentions.$1.to_q."),
        .regex(#"\.attentions\.(\d+)\.key\."#, ".attentions.$1.to_k."),
        .regex(#"\.attentions\.(\d+)\.value\."#, ".attentions.$1.to_v."),
        .regex(#"\.attentions\.(\d+)\.proj_attn\."#, ".attentions.$1.to_out.0."),
    ]

    /// A diffusers folder: the component folder itself, or a pipeline folder with `vae/` (or `vqvae/`). Attention
    /// weights saved under diffusers' old names are renamed (`legacyAttentionRules`).
    public static func load(folder: URL, variant: String? = nil) throws -> (model: FirstStageModel, report: LoadReport) {
        let (dir, config) = try componentFolder(folder)
        let cls = (try? JSONSerialization.jsonObject(with: Data(contentsOf: config)) as? [String: Any])?["_class_name"] as? String
        let records = mapKeys(try weights(dir, variant: variant), legacyAttentionRules)
        switch cls {
        case "VQModel":
            let m = try VQModel(config: try VQModelConfig.load(config))
            let report = try m.load(records, component: dir.lastPathComponent)
            m.loadReport = report
            return (.vq(m), report)
        case "AutoencoderKL", nil:
            let m = try AutoencoderKL(config: try AutoencoderKLConfig.load(config))
            let report = try m.load(records, component: dir.lastPathComponent)
            m.loadReport = report
            return (.kl(m), report)
        case let other?:
            throw AutoencoderError("\(config.path): _class_name \(other) is not AutoencoderKL or VQModel")
        }
    }

    static func componentFolder(_ folder: URL) throws -> (URL, URL) {
        let fm = FileManager.default
        for dir in [folder, folder.appendingPathComponent("vae"), folder.appendingPathComponent("vqvae")] {
            let c = dir.appendingPathComponent("config.json")
            if fm.fileExists(atPath: c.path) { return (dir, c) }
        }
        throw AutoencoderError("\(folder.path): no config.json (nor vae/config.json, vqvae/config.json)")
    }

    static func weights(_ dir: URL, variant: String?) throws -> [String: TensorRecord] {
        let component = try DiffusersFolder(url: dir, variant: variant).components.first
        guard let component, !component.weightFiles.isEmpty else {
            throw AutoencoderError("\(dir.path): no diffusion_pytorch_model.safetensors / .bin weights")
        }
        return try component.tensors()
    }
}

extension AutoencoderKL {
    /// An AutoencoderKL from a diffusers folder (the `vae/` folder or the pipeline folder holding it).
    public static func load(folder: URL, variant: String? = nil) throws -> AutoencoderKL {
        guard case .kl(let m) = try FirstStageModel.load(folder: folder, variant: variant).model else {
            throw AutoencoderError("\(folder.path) holds a VQModel, not an AutoencoderKL")
        }
        return m
    }
}

extension VQModel {
    public static func load(folder: URL, variant: String? = nil) throws -> VQModel {
        guard case .vq(let m) = try FirstStageModel.load(folder: folder, variant: variant).model else {
            throw AutoencoderError("\(folder.path) holds an AutoencoderKL, not a VQModel")
        }
        return m
    }
}
