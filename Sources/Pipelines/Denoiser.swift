// The model side of every sampling loop, as the diffusers pipelines call their UNet
// (pipelines/stable_diffusion/pipeline_stable_diffusion.py __call__: classifier-free guidance with the unconditional and
// conditional inputs in ONE batch of 2B, noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond);
// pipeline_stable_diffusion_inpaint.py: 9-channel UNets get [latents, mask, masked image latents] concatenated after
// scale_model_input; latent_diffusion/pipeline_latent_diffusion_superresolution.py: the low-res image is concatenated
// before scale_model_input; latent_diffusion/pipeline_latent_diffusion.py LDMTextToImagePipeline: the same batch of
// [uncond, cond]). Class-conditional guidance uses a "null" class as the unconditional label.
import Diffusion
import Foundation
import NeuralNetwork
import TensorCore
import UNetModels

public final class Denoiser {
    public let unet: UNet2DConditionModel
    public var guidanceScale: Float
    /// Conditional cross-attention context (B, S, D) and its unconditional counterpart (negative prompt).
    public let context: Tensor?
    public let uncondContext: Tensor?
    /// Class labels (B) and the unconditional (null class) labels for class-conditional guidance.
    public let classLabels: [Int]?
    public let uncondClassLabels: [Int]?
    /// Extra input channels (B, k, h, w): appended after scale_model_input (inpainting) or before (super-resolution).
    public var concat: Tensor?
    public var concatBeforeScaling = false
    /// The UNet's timestep condition (B, time_cond_proj_dim): LCM's guidance embedding.
    public var timestepCond: Tensor?
    /// SDXL added conditions (text_embeds, time_ids) of the conditional and the unconditional batch.
    public var addedCond: AddedConditions?
    public var uncondAddedCond: AddedConditions?
    /// Once the denoising loop is over, before the decode, drop the UNet's memory-mapped weight pages and free the
    /// copies its load converted (`releaseUNetWeights`; a process that makes one generation:
    /// `ModelBundle.evictsWeightsAfterUse`). The next Denoiser of the same UNet makes the copies again.
    public var evictsUNetAfterLoop = false

    public init(unet: UNet2DConditionModel, guidanceScale: Float = 1, context: Tensor? = nil, uncondContext: Tensor? = nil,
                classLabels: [Int]? = nil, uncondClassLabels: [Int]? = nil) {
        self.unet = unet
        self.guidanceScale = guidanceScale
        self.context = context
        self.uncondContext = uncondContext
        self.classLabels = classLabels
        self.uncondClassLabels = uncondClassLabels
        // Weights an earlier generation released (`evictsUNetAfterLoop`) are converted again before this one runs.
        unet.restoreConvertedWeights()
    }

    /// Drops the UNet's memory-mapped weight pages and frees the copies its load converted from them (bf16 weights
    /// for bf16 compute, float32 ones of a 16-bit file): between the loop and the decode they would be resident beside
    /// the decode's buffers. The freed buffers go back to the kernel (not to the tensor buffer cache, which keeps as
    /// much as the loop's high-water mark); the loop's activations cached for reuse go with them. Values never
    /// change; a later Denoiser restores the copies bit for bit.
    public func releaseUNetWeights() {
        unet.releaseConvertedWeights()
        unet.evictMappedWeights()
        releaseCachedTensorBuffers()
    }

    /// Guidance runs when the pipeline supplied an unconditional input and the scale is not 1. The pipelines decide
    /// by supplying it: Stable Diffusion and class-conditional sampling when guidance_scale > 1 (diffusers
    /// `do_classifier_free_guidance`), LDM-BERT text-to-image when guidance_scale != 1 (LDMTextToImagePipeline).
    public var doClassifierFreeGuidance: Bool {
        guidanceScale != 1 && (uncondContext != nil || uncondClassLabels != nil)
    }

    /// The scheduler-ready model output for latents `x` (B, C, h, w) at `timesteps[stepIndex]`: float32, the shape of `x`.
    public func predict(_ x: Tensor, scheduler: Scheduler, stepIndex: Int) throws -> Tensor {
        let t = Float(scheduler.timesteps[stepIndex])
        var input: Tensor
        if concatBeforeScaling, let c = concat {
            input = scheduler.scaleModelInput(concat2([x, c]), stepIndex: stepIndex)
        } else {
            input = scheduler.scaleModelInput(x, stepIndex: stepIndex)
            if let c = concat { input = concat2([input, c]) }
        }
        let out = try GradMode.noGrad { () throws -> Tensor in
            if doClassifierFreeGuidance, let u = uncondContext, let c = context, u.shape != c.shape {
                // Prompts of different lengths (web-UI chunking): one pass each, as AUTOMATIC1111's CFGDenoiser does
                // when cond and uncond have different token counts (sd_samplers_cfg_denoiser.py).
                let outU = try unet(sample: input, timestep: t, encoderHiddenStates: u, classLabels: uncondClassLabels, timestepCond: timestepCond,
                                    addedCond: uncondAddedCond ?? addedCond)
                let outC = try unet(sample: input, timestep: t, encoderHiddenStates: c, classLabels: classLabels, timestepCond: timestepCond,
                                    addedCond: addedCond)
                return outU + (outC - outU) * guidanceScale
            }
            if doClassifierFreeGuidance {
                let ctx = try pair(uncondContext, context, what: "context")
                let labels = try pairLabels()
                let both = try unet(sample: TensorCore.concat([input, input], axis: 0), timestep: t,
                                    encoderHiddenStates: ctx, classLabels: labels,
                                    timestepCond: timestepCond.map { TensorCore.concat([$0, $0], axis: 0) },
                                    addedCond: pairAdded())
                let halves = both.chunk(2, axis: 0)
                return halves[0] + (halves[1] - halves[0]) * guidanceScale
            }
            return try unet(sample: input, timestep: t, encoderHiddenStates: context, classLabels: classLabels, timestepCond: timestepCond,
                            addedCond: addedCond)
        }
        // Learned-variance UNets (out_channels = 2 * latent channels): the first half is the prediction.
        let channels = x.shape[1]
        let pred = out.shape[1] == channels ? out : out.narrow(1, 0, channels)
        return pred.contiguous().float32()
    }

    private func concat2(_ parts: [Tensor]) -> Tensor { TensorCore.concat(parts, axis: 1) }

    private func pair(_ u: Tensor?, _ c: Tensor?, what: String) throws -> Tensor? {
        switch (u, c) {
        case (nil, nil): return nil
        case let (u?, c?): return TensorCore.concat([u, c], axis: 0)
        default: throw PipelineError("classifier-free guidance needs both a conditional and an unconditional \(what)")
        }
    }

    /// [uncond, cond] added conditions, as StableDiffusionXLPipeline concatenates add_text_embeds / add_time_ids.
    private func pairAdded() -> AddedConditions? {
        guard let c = addedCond else { return nil }
        let u = uncondAddedCond ?? c
        return AddedConditions(textEmbeds: TensorCore.concat([u.textEmbeds, c.textEmbeds], axis: 0),
                               timeIds: TensorCore.concat([u.timeIds, c.timeIds], axis: 0))
    }

    private func pairLabels() throws -> [Int]? {
        switch (uncondClassLabels, classLabels) {
        case (nil, nil): return nil
        case let (u?, c?): return u + c
        default: throw PipelineError("classifier-free guidance needs both class labels and null-class labels")
        }
    }
}
