import NeuralNetwork
import TensorCore

// `--precision int8` for a loaded model: the UNet's Linear and Conv2d weights quantised to int8 once (NeuralNetwork's
// Int8Quantization.swift), except its first and last convolutions (conv_in reads the 4-channel latents, conv_out
// writes the predicted noise: the two layers whose quantisation error reaches the sampler unmixed; keeping the first
// and last layers in float is the usual post-training quantisation practice). The text encoder and the first stage
// stay as loaded (they run once per image); attention's softmax, the norms and activations stay float32.

extension ModelBundle {
    /// Quantises the UNet for int8 inference (after any LoRA merge: the merged weights are the ones quantised).
    /// Throws where the CPU (or the ISA level in use) has no AVX512_VNNI.
    @discardableResult
    public func quantizeUNetToInt8() throws -> Int8QuantizationReport {
        if let why = Int8Compute.unavailableReason { throw PipelineError.unsupportedOption(name: "int8", why: why) }
        return unet.quantizeToInt8(skipping: [ObjectIdentifier(unet.convIn), ObjectIdentifier(unet.convOut)])
    }
}
