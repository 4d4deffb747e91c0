import Checkpoints
import NeuralNetwork
import TensorCore

// Weights of the OpenCLIP text tower as CompVis ldm/modules/encoders/modules.py `FrozenOpenCLIPEmbedder` (SD 2.x
// single-file checkpoints: cond_stage_model.model.*) stores them, renamed to CLIPTextModel names as diffusers
// loaders/single_file_utils.py `convert_open_clip_checkpoint` does: fused attn.in_proj (3D, D) split into q, k, v
// (views on the same bytes), ln_1/ln_2 -> layer_norm1/2, mlp.c_fc/c_proj -> fc1/fc2, ln_final -> final_layer_norm.
// FrozenOpenCLIPEmbedder's layer="penultimate" is a CLIPTextModel with one layer fewer (diffusers' SD 2 text
// encoder has 23 layers), or the full tower with `encode(ids, clipSkip: 1)`; OpenCLIP ViT-H uses exact GELU.

extension CLIPTextConfig {
    /// The text encoder of SD 1.x (openai/clip-vit-large-patch14, text_encoder/config.json of the SD 1.x repos),
    /// for CompVis single-file checkpoints (FrozenCLIPEmbedder) that carry no config.
    public static var stableDiffusion1: CLIPTextConfig {
        var c = CLIPTextConfig()
        c.hiddenSize = 768; c.intermediateSize = 3072; c.numHiddenLayers = 12; c.numAttentionHeads = 12
        c.hiddenAct = "quick_gelu"; c.bosTokenID = 0; c.eosTokenID = 2; c.padTokenID = 1
        return c
    }
    /// The SD 2.x text encoder (OpenCLIP ViT-H/14 text tower without its last layer, as diffusers ships it: 23 layers).
    public static var stableDiffusion2: CLIPTextConfig {
        var c = CLIPTextConfig()
        c.hiddenSize = 1024; c.intermediateSize = 4096; c.numHiddenLayers = 23; c.numAttentionHeads = 16
        c.hiddenAct = "gelu"; c.bosTokenID = 0; c.eosTokenID = 2; c.padTokenID = 1
        return c
    }
}

extension CLIPTextModel {
    /// CLIPTextModel-named records from OpenCLIP text-tower keys under `prefix`; text_projection, logit_scale and the
    /// visual tower are left out.
    public static func openCLIPRecords(_ records: [String: TensorRecord], prefix: String = "cond_stage_model.model.") throws -> [String: TensorRecord] {
        let leaves = [("ln_1.", "layer_norm1."), ("ln_2.", "layer_norm2."), ("attn.out_proj.", "self_attn.out_proj."),
                      ("mlp.c_fc.", "mlp.fc1."), ("mlp.c_proj.", "mlp.fc2.")]
        var out: [String: TensorRecord] = [:]
        for (key, r) in records where key.hasPrefix(prefix) {
            let k = String(key.dropFirst(prefix.count))
            switch k {
            case "token_embedding.weight": out["text_model.embeddings.token_embedding.weight"] = r
            case "positional_embedding": out["text_model.embeddings.position_embedding.weight"] = r
            case "ln_final.weight", "ln_final.bias": out["text_model.final_layer_norm." + k.dropFirst("ln_final.".count)] = r
            default:
                guard k.hasPrefix("transformer.resblocks.") else { continue }
                let rest = k.dropFirst("transformer.resblocks.".count)
                guard let dot = rest.firstIndex(of: "."), let layer = Int(rest[..<dot]) else { continue }
                let leaf = String(rest[rest.index(after: dot)...]), base = "text_model.encoder.layers.\(layer)."
                if leaf == "attn.in_proj_weight" || leaf == "attn.in_proj_bias" {
                    let kind = leaf.hasSuffix("weight") ? "weight" : "bias"
                    for (i, part) in try splitRows(r, parts: 3).enumerated() {
                        out[base + "self_attn.\(["q", "k", "v"][i])_proj.\(kind)"] = part
                    }
                } else if let (from, to) = leaves.first(where: { leaf.hasPrefix($0.0) }) {
                    out[base + to + leaf.dropFirst(from.count)] = r
                }
            }
        }
        return out
    }

    /// `parts` equal slices of the first axis, as views on the record's bytes.
    static func splitRows(_ r: TensorRecord, parts: Int) throws -> [TensorRecord] {
        guard let rows = r.shape.first, rows % parts == 0, rows > 0 else {
            throw ConditioningError("\(r.name): shape \(r.shape) cannot be split into \(parts) along its first axis")
        }
        let n = rows / parts
        return try (0..<parts).map { i in
            try TensorRecord(name: "\(r.name)[\(i)]", dtype: r.dtype, shape: [n] + r.shape.dropFirst(), strides: r.strides,
                             byteOffset: r.byteOffset + i * n * r.strides[0] * r.dtype.byteSize, storage: r.storage)
        }
    }

    /// Loads an SD 2.x CompVis checkpoint's text encoder (OpenCLIP names under `prefix`).
    @discardableResult
    public func loadOpenCLIPWeights(_ records: [String: TensorRecord], prefix: String = "cond_stage_model.model.") throws -> LoadReport {
        try load(Self.openCLIPRecords(records, prefix: prefix), component: "OpenCLIP text encoder")
    }
}
