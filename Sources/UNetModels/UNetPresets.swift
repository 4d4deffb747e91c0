import Foundation
import NeuralNetwork
import TensorCore

// Reference architectures, as in the unet/config.json of runwayml/stable-diffusion-v1-5 (diffusers
// UNet2DConditionModel defaults with cross_attention_dim 768) and stabilityai/stable-diffusion-2-1
// (attention_head_dim [5, 10, 20, 20], cross_attention_dim 1024, use_linear_projection), for benchmarks and tests.

extension UNetConfig {
    /// SD 1.x: block_out_channels [320, 640, 1280, 1280], layers_per_block 2, 8 heads, cross_attention_dim 768.
    public static var stableDiffusion15: UNetConfig {
        // Every value not listed is the diffusers default, which is the SD 1.x architecture.
        try! UNetConfig.decode(Data(#"{"_class_name": "UNet2DConditionModel", "cross_attention_dim": 768}"#.utf8))
    }

    /// SD 2.x: heads of 64 channels (attention_head_dim [5, 10, 20, 20]), OpenCLIP-H context of 1024, linear projections.
    public static var stableDiffusion2: UNetConfig {
        try! UNetConfig.decode(Data(#"""
            {"_class_name": "UNet2DConditionModel", "cross_attention_dim": 1024, "attention_head_dim": [5, 10, 20, 20],
             "use_linear_projection": true}
            """#.utf8))
    }
}

extension UNet2DConditionModel {
    /// A model of `config` with torch-style random weights drawn from `TorchGenerator(seed:)` (for `ldm bench unet`).
    public static func random(config: UNetConfig = .stableDiffusion15, seed: UInt64 = 0) throws -> UNet2DConditionModel {
        let model = try UNet2DConditionModel(config: config)
        initializeParameters(model, generator: TorchGenerator(seed: seed))
        return model
    }
}
