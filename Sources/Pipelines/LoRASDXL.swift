// SDXL LoRA key names, in addition to those LoRA.swift resolves (kohya `lora_unet_<diffusers path>` / `lora_te_<path>`,
// diffusers / PEFT `unet.` / `text_encoder.`), as diffusers' lora_conversion_utils.py (_convert_non_diffusers_lora_to_diffusers,
// _maybe_map_sgm_blocks_to_diffusers) and AUTOMATIC1111's Lora extension (networks.py convert_diffusers_name_to_compvis)
// read them:
//   kohya `lora_te1_<path>` -> text_encoder (CLIP ViT-L), `lora_te2_<path>` -> text_encoder_2 (OpenCLIP bigG), and
//   `lora_unet_<sgm path>` (sd-scripts trains SDXL on Stability's UNet: input_blocks_4_1_transformer_blocks_0_attn1_to_q,
//   input_blocks_1_0_in_layers_2, middle_block_1_..., output_blocks_...) -> the UNet parameter the CompVis UNet table
//   (Sources/CompVis/UNetTable.swift, the layout read from the model's own parameter names) maps it to;
//   diffusers / PEFT `text_encoder_2.<path>` (with or without transformers' "text_model." level) and its adapter
//   config (`text_encoder_2.r`, `.lora_alpha`, ... in lora_adapter_metadata).
// Keys stay strict: a name that resolves to no parameter of the loaded model is an error (LoRA.group).
import CompVis
import Foundation

extension LoRA {
    /// The kohya module names of `baseShapes`' parameters beyond `lora_unet_<diffusers path>` / `lora_te_<path>`.
    static func extraKohyaNames(_ baseShapes: [String: [Int]]) -> [String: String] {
        func underscored(_ s: Substring) -> String { s.replacingOccurrences(of: ".", with: "_") }
        var out: [String: String] = [:]
        let unetKeys = baseShapes.keys.filter { $0.hasPrefix("unet.") }.map { String($0.dropFirst(5)) }
        // Only spatial-transformer UNets (SD / SDXL) have sgm-named LoRAs; their block layout is read from the names.
        let table: ComponentMapping? = unetKeys.contains { $0.contains(".transformer_blocks.") }
            ? (try? UNetLayout.detect(diffusers: unetKeys)).map { ComponentMapping(compvisPrefix: CompVisUNetKeyMap.compVisPrefix, component: "unet", rules: $0.rules) }
            : nil
        for name in baseShapes.keys where name.hasSuffix(".weight") {
            let path = name.dropLast(".weight".count)
            if path.hasPrefix("text_encoder.") {
                out["lora_te1_" + underscored(path.dropFirst("text_encoder.".count))] = name
            } else if path.hasPrefix("text_encoder_2.") {
                out["lora_te2_" + underscored(path.dropFirst("text_encoder_2.".count))] = name
            } else if path.hasPrefix("unet."), let table, let (sgm, _) = table.toCompVis(String(name.dropFirst(5)), shape: []),
                      sgm.hasSuffix(".weight") {
                out["lora_unet_" + underscored(sgm.dropLast(".weight".count))] = name
            }
        }
        return out
    }

    /// PEFT parameter names to try for a `text_encoder_2.` module path (transformers 5 may drop "text_model.").
    static func textEncoder2Candidates(_ path: String) -> [String] {
        let head = "text_encoder_2."
        guard path.hasPrefix(head), !path.hasPrefix(head + "text_model."), !path.hasPrefix(head + "text_projection") else { return [] }
        return [head + "text_model." + path.dropFirst(head.count) + ".weight"]
    }

    /// The component a parameter belongs to ("unet", "text_encoder", "text_encoder_2"): the PEFT config's prefix.
    static func component(ofParameter parameter: String) -> String {
        String(parameter.prefix { $0 != "." })
    }
}
