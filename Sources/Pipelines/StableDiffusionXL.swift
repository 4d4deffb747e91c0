// SDXL text-to-image conditioning, following diffusers 0.42 StableDiffusionXLPipeline
// (pipelines/stable_diffusion_xl/pipeline_stable_diffusion_xl.py): encode_prompt runs both text encoders
// (CLIPTextModel, CLIPTextModelWithProjection) on their own tokenizers, concatenates their hidden_states[-2] on the
// feature axis, takes the second encoder's text_embeds as the pooled embedding, zeroes the unconditional inputs when
// no negative prompt is given and force_zeros_for_empty_prompt is set; _get_add_time_ids builds the micro-conditioning
// original_size + crops_coords_top_left + target_size. The sampling (GenerationRun) and random draws are
// StableDiffusionPipeline's.
import Conditioning
import Foundation
import TensorCore
import UNetModels

/// SDXL's size micro-conditioning, each a (height, width) / (top, left) pair; nil takes the pipeline default
/// (original and target size: the output size; crop: (0, 0); negatives: the positive values).
public struct SDXLSizeConditioning: Sendable, Equatable {
    public var originalSize: [Int]?
    public var cropsCoordsTopLeft: [Int]?
    public var targetSize: [Int]?
    public var negativeOriginalSize: [Int]?
    public var negativeCropsCoordsTopLeft: [Int]?
    public var negativeTargetSize: [Int]?
    public init() {}

    public func validate() throws {
        let pairs: [(String, [Int]?, Bool)] = [
            ("original size", originalSize, false), ("crop top-left", cropsCoordsTopLeft, true), ("target size", targetSize, false),
            ("negative original size", negativeOriginalSize, false), ("negative crop top-left", negativeCropsCoordsTopLeft, true),
            ("negative target size", negativeTargetSize, false),
        ]
        for (what, v, zeroOK) in pairs {
            guard let v else { continue }
            guard v.count == 2, v.allSatisfy({ zeroOK ? $0 >= 0 : $0 > 0 }), v.allSatisfy({ $0 <= 1 << 20 }) else {
                throw PipelineError("SDXL \(what) must be two \(zeroOK ? "non-negative" : "positive") integers (height, width), got \(v)")
            }
        }
    }

    /// (positive, negative) add_time_ids for an output of `height` x `width`: diffusers uses the negative values only
    /// when both negative_original_size and negative_target_size are given.
    public func timeIDs(height: Int, width: Int) -> (positive: [Float], negative: [Float]) {
        let out = [height, width]
        let pos = (originalSize ?? out) + (cropsCoordsTopLeft ?? [0, 0]) + (targetSize ?? out)
        var neg = pos
        if let o = negativeOriginalSize, let t = negativeTargetSize { neg = o + (negativeCropsCoordsTopLeft ?? [0, 0]) + t }
        return (pos.map(Float.init), neg.map(Float.init))
    }
}

extension StableDiffusionPipeline {
    /// StableDiffusionXLPipeline.encode_prompt for one text: (hidden states of both encoders concatenated (1, L, D1 + D2),
    /// pooled text_embeds (1, P)).
    public func encodeSDXLPrompt(_ text: String, prompt2: String? = nil, clipSkip: Int = 0) throws -> (Tensor, Tensor) {
        guard let te2 = bundle.textEncoder2, let tok2 = bundle.tokenizer2 else {
            throw PipelineError("SDXL needs text_encoder_2 (CLIPTextModelWithProjection) and tokenizer_2")
        }
        let k = clipSkip + 1
        return try GradMode.noGrad { () throws -> (Tensor, Tensor) in
            var hidden: [Tensor] = []
            if let te1 = bundle.textEncoder, let tok1 = bundle.tokenizer {
                hidden.append(try te1.hiddenStateAndPooled([tok1(text, maxLength: tok1.modelMaxLength)], fromEnd: k).hidden)
            }
            let (h2, pooled) = try te2.hiddenStateAndTextEmbeds([tok2(prompt2 ?? text, maxLength: tok2.modelMaxLength)], fromEnd: k)
            hidden.append(h2)
            guard hidden.allSatisfy({ $0.shape[1] == h2.shape[1] }) else {
                throw PipelineError("SDXL: the two tokenizers' model_max_length differ (\(hidden.map { $0.shape[1] }))")
            }
            return (concat(hidden, axis: 2), pooled)
        }
    }

    /// The Denoiser of StableDiffusionXLPipeline.__call__ (prompt embeddings, pooled embeddings, add_time_ids).
    func sdxlDenoiser(_ p: PromptOptions, batch: Int) throws -> Denoiser {
        guard p.emphasis == .diffusers else {
            throw PipelineError("SDXL: prompt emphasis \(p.emphasis.rawValue) is not implemented yet (use the diffusers mode)")
        }
        guard !bundle.requiresAestheticsScore else {
            throw PipelineError("\(bundle.url.lastPathComponent) is an SDXL refiner (requires_aesthetics_score): it runs in img2img, which is not implemented for SDXL yet")
        }
        guard let te2 = bundle.textEncoder2, bundle.tokenizer2 != nil else {
            throw PipelineError("SDXL needs text_encoder_2 (CLIPTextModelWithProjection) and tokenizer_2")
        }
        if let te1 = bundle.textEncoder, p.clipSkip + 1 > te1.layers.count {
            throw PipelineError("clip skip \(p.clipSkip + 1) is beyond the text encoder's \(te1.layers.count) layers")
        }
        guard p.clipSkip + 1 <= te2.textModel.layers.count else {
            throw PipelineError("clip skip \(p.clipSkip + 1) is beyond text_encoder_2's \(te2.textModel.layers.count) layers")
        }
        try p.sizeConditioning.validate()
        let lcm = bundle.unet.config.timeCondProjDim != nil
        let guidance = p.guidanceScale > 1 && !lcm && !isLatentConsistencyPipeline
        let (cond, pooled) = try encodeSDXLPrompt(p.prompt, clipSkip: p.clipSkip)
        var uncond: Tensor?, uncondPooled: Tensor?
        if guidance {
            if p.negativePrompt.isEmpty && bundle.forceZerosForEmptyPrompt {
                uncond = Tensor(zeros: cond.shape)
                uncondPooled = Tensor(zeros: pooled.shape)
            } else {
                (uncond, uncondPooled) = try encodeSDXLPrompt(p.negativePrompt, clipSkip: p.clipSkip)
            }
        }
        let rep = { (t: Tensor) in batch == 1 ? t : concat([Tensor](repeating: t, count: batch), axis: 0) }
        let (h, w) = size(p)
        let (ids, negIDs) = p.sizeConditioning.timeIDs(height: h, width: w)
        // diffusers builds cat([negative_add_time_ids, add_time_ids]).repeat(batch, 1) for the 2B rows [uncond, cond]:
        // row r takes the negative ids when r is even. With more than one image and distinct negative size
        // conditioning, uncond and cond rows therefore alternate; reproduced as is for seed parity.
        let rows = { (first: Int) in Tensor([Float]((first..<(first + batch)).flatMap { uncond == nil ? ids : ($0 % 2 == 0 ? negIDs : ids) }),
                                            shape: [batch, ids.count]) }
        let den = Denoiser(unet: bundle.unet, guidanceScale: Float(p.guidanceScale), context: rep(cond), uncondContext: uncond.map(rep))
        den.addedCond = AddedConditions(textEmbeds: rep(pooled), timeIds: rows(uncond == nil ? 0 : batch))
        if let up = uncondPooled { den.uncondAddedCond = AddedConditions(textEmbeds: rep(up), timeIds: rows(0)) }
        if let dim = bundle.unet.config.timeCondProjDim {
            den.timestepCond = UNet2DConditionModel.guidanceScaleEmbedding([Float](repeating: Float(p.guidanceScale - 1), count: batch), dim: dim)
        }
        return den
    }

    func refuseSDXL(_ what: String) throws {
        if bundle.isSDXL { throw PipelineError("SDXL \(what) is not implemented yet (txt2img only)") }
    }
}
