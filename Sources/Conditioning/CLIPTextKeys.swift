// transformers CLIPTextModel parameter names in both spellings (with and without "text_model."), as
// transformers 4 and 5 write them (modeling_clip.py CLIPTextModel; transformers 5 save_pretrained drops the prefix).
import Foundation

/// transformers CLIPTextModel parameter names: transformers < 5 (and every released SD file, CompVis
/// `cond_stage_model.transformer.text_model.*` and diffusers `text_encoder/`) write them under "text_model.";
/// transformers 5 `save_pretrained` writes `embeddings.*`, `encoder.*`, `final_layer_norm.*` without it.
public enum CLIPTextKeys {
    public static let canonicalPrefix = "text_model."
    static let heads = ["embeddings.", "encoder.", "final_layer_norm."]

    /// `key` in the canonical spelling (with "text_model."); other keys unchanged.
    public static func canonical(_ key: String) -> String {
        heads.contains { key.hasPrefix($0) } ? canonicalPrefix + key : key
    }

    /// Whether CLIPTextModel keys use transformers 5's spelling (no "text_model.").
    public static func lacksPrefix(_ keys: some Sequence<String>) -> Bool {
        keys.contains { k in heads.contains { k.hasPrefix($0) } }
    }
}
