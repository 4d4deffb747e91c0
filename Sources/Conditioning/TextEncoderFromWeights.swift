import Checkpoints
import Foundation

// The text encoder's architecture read from its weights, as the web UIs and diffusers' single-file loader do
// (diffusers loaders/single_file_utils.py create_diffusers_clip_model_from_ldm reads the width and layer count of
// the checkpoint; ComfyUI's supported_models detection): CompVis `FrozenCLIPEmbedder` has no parameters in the
// released YAMLs and hard-codes openai/clip-vit-large-patch14 in code, and `FrozenOpenCLIPEmbedder` names an
// open_clip architecture ("ViT-H-14") whose sizes the YAML does not state either. The weights pin the width, the layer
// count, the MLP width, the vocabulary and the positions; the head count is not in them and follows OpenAI / OpenCLIP
// (head size 64; one head below 64 wide), which is what every released CLIP text tower uses.

extension CLIPTextConfig {
    /// Heads of a CLIP text tower of `width`: head size 64, as OpenAI CLIP and OpenCLIP (ViT-L 768/12, ViT-H 1024/16,
    /// ViT-bigG 1280/20); narrower towers get one head.
    public static func headCount(width: Int) -> Int { max(1, width / 64) }

    /// A CLIPTextModel config from CLIPTextModel-named records (either spelling: with or without "text_model.").
    /// `hiddenAct`: quick_gelu for OpenAI CLIP (FrozenCLIPEmbedder), gelu for OpenCLIP.
    public static func derived(fromCLIPRecords records: [String: TensorRecord], hiddenAct: String = "quick_gelu",
                               what: String = "text encoder") throws -> CLIPTextConfig {
        var shapes: [String: [Int]] = [:]
        for (k, r) in records { shapes[CLIPTextKeys.canonical(k)] = r.shape }
        func dim(_ key: String, _ i: Int) throws -> Int {
            guard let s = shapes["text_model." + key], i < s.count else {
                throw ConditioningError("\(what): cannot derive its size from the weights: text_model.\(key) is missing")
            }
            return s[i]
        }
        var c = CLIPTextConfig()
        c.vocabSize = try dim("embeddings.token_embedding.weight", 0)
        c.hiddenSize = try dim("embeddings.token_embedding.weight", 1)
        c.maxPositionEmbeddings = try dim("embeddings.position_embedding.weight", 0)
        c.intermediateSize = try dim("encoder.layers.0.mlp.fc1.weight", 0)
        var layers = 0
        while shapes["text_model.encoder.layers.\(layers).layer_norm1.weight"] != nil { layers += 1 }
        guard layers > 0 else { throw ConditioningError("\(what): cannot derive its size from the weights: no encoder layers") }
        c.numHiddenLayers = layers
        c.numAttentionHeads = headCount(width: c.hiddenSize)
        c.hiddenAct = hiddenAct
        // OpenAI's 49408-token vocabulary: <|startoftext|> 49406, <|endoftext|> 49407 (pooling is not used for SD).
        if c.vocabSize != 49408 {
            c.bosTokenID = 0
            c.eosTokenID = 2
            c.padTokenID = 1
        }
        try c.validate()
        return c
    }
}
