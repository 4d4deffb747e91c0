import Checkpoints
import NeuralNetwork
import TensorCore

// The text encoders of CompVis single-file checkpoints as fixed configs: ldm/modules/encoders/modules.py
// `FrozenCLIPEmbedder` (SD 1.x, openai/clip-vit-large-patch14) and `FrozenOpenCLIPEmbedder` (SD 2.x, OpenCLIP ViT-H/14
// without its last layer, as diffusers ships it). Their weights' names: CompVis/OpenCLIPTable.swift.

extension CLIPTextConfig {
    /// The text encoder of SD 1.x (openai/clip-vit-large-patch14, text_encoder/config.json of the SD 1.x repos),
    /// for CompVis single-file checkpoints (FrozenCLIPEmbedder) that carry no config.
    public static var stableDiffusion1: CLIPTextConfig {
        var c = CLIPTextConfig()
        c.hiddenSize = 768
        c.intermediateSize = 3072
        c.numHiddenLayers = 12
        c.numAttentionHeads = 12
        c.hiddenAct = "quick_gelu"
        c.bosTokenID = 0
        c.eosTokenID = 2
        c.padTokenID = 1
        return c
    }
    /// The SD 2.x text encoder (OpenCLIP ViT-H/14 text tower without its last layer, as diffusers ships it: 23 layers).
    public static var stableDiffusion2: CLIPTextConfig {
        var c = CLIPTextConfig()
        c.hiddenSize = 1024
        c.intermediateSize = 4096
        c.numHiddenLayers = 23
        c.numAttentionHeads = 16
        c.hiddenAct = "gelu"
        c.bosTokenID = 0
        c.eosTokenID = 2
        c.padTokenID = 1
        return c
    }
}
