// The CLIP text encoder's table: CompVis ldm/modules/encoders/modules.py `FrozenCLIPEmbedder` (SD 1.x) stores
// transformers' CLIPTextModel under `cond_stage_model.transformer.`, so the names after the prefix are the same on
// both sides (written in their canonical "text_model." spelling, CLIPTextKeys); PipelineLayout.swift carries it as an
// identity row set. Its size is read from the weights (Conditioning/TextEncoderFromWeights.swift). SDXL's sgm files
// keep the same CLIP ViT-L text model under `conditioner.embedders.0.transformer.` (GeneralConditioner's first
// FrozenCLIPEmbedder), also with identical names after the prefix (diffusers LDM_CLIP_PREFIX_TO_REMOVE).
import Checkpoints
import Conditioning
import Foundation

public enum CLIPTable {
    public static let compvisPrefix = "cond_stage_model.transformer."
    /// SDXL base (sgm GeneralConditioner): the CLIP ViT-L embedder.
    public static let sdxlPrefix = "conditioner.embedders.0.transformer."

    /// The FrozenCLIPEmbedder's records without the CompVis prefix, under CLIPTextModel names (either spelling in).
    public static func records(_ records: [String: TensorRecord], prefix compvisPrefix: String = compvisPrefix) -> [String: TensorRecord] {
        var out: [String: TensorRecord] = [:]
        for (key, r) in records where key.hasPrefix(compvisPrefix) {
            out[CLIPTextKeys.canonical(String(key.dropFirst(compvisPrefix.count)))] = r
        }
        return out
    }
}

extension CLIPTextConfig {
    /// SD 1.x text encoder (FrozenCLIPEmbedder) of a CompVis checkpoint: `cond_stage_model.transformer.` with or
    /// without "text_model.".
    public static func frozenCLIPEmbedder(_ records: [String: TensorRecord]) throws -> CLIPTextConfig {
        try derived(fromCLIPRecords: CLIPTable.records(records), hiddenAct: "quick_gelu", what: "FrozenCLIPEmbedder")
    }
}
