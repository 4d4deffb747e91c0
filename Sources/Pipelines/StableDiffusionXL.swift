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
import Tokenizers
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
    /// The refiner's aesthetic-score conditioning (StableDiffusionXLImg2ImgPipeline / InpaintPipeline aesthetic_score,
    /// negative_aesthetic_score), used in place of the target size when the model requires_aesthetics_score.
    public var aestheticScore: Double = 6
    public var negativeAestheticScore: Double = 2.5
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
        for (what, v) in [("aesthetic score", aestheticScore), ("negative aesthetic score", negativeAestheticScore)] {
            guard v.isFinite, abs(v) <= 1e6 else { throw PipelineError("SDXL \(what) must be a finite number, got \(v)") }
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

    /// (positive, negative) add_time_ids of the image-to-image and inpainting pipelines (_get_add_time_ids of
    /// pipeline_stable_diffusion_xl_img2img.py / _inpaint.py) for latents decoding to `height` x `width`: each negative
    /// size defaults to its positive one separately; with `aesthetic` (requires_aesthetics_score) original size + crop +
    /// aesthetic score, otherwise original size + crop + target size, where diffusers 0.42 puts the positive crop in
    /// the negative ids too (negative_crops_coords_top_left is read only by the aesthetic variant); kept for parity.
    public func imageTimeIDs(height: Int, width: Int, aesthetic: Bool) -> (positive: [Float], negative: [Float]) {
        let out = [height, width]
        let original = originalSize ?? out, target = targetSize ?? out, crop = cropsCoordsTopLeft ?? [0, 0]
        let negOriginal = negativeOriginalSize ?? original, negTarget = negativeTargetSize ?? target
        if aesthetic {
            return ((original + crop).map(Float.init) + [Float(aestheticScore)],
                    (negOriginal + (negativeCropsCoordsTopLeft ?? [0, 0])).map(Float.init) + [Float(negativeAestheticScore)])
        }
        return ((original + crop + target).map(Float.init), (negOriginal + crop + negTarget).map(Float.init))
    }
}

extension StableDiffusionPipeline {
    /// StableDiffusionXLPipeline.encode_prompt for one text: (hidden states of both encoders concatenated (1, L, D1 + D2),
    /// pooled text_embeds (1, P)). With a web-UI emphasis mode (not `.diffusers`), AUTOMATIC1111's SDXL conditioning
    /// instead (`encodeSDXLWeighted`).
    public func encodeSDXLPrompt(_ text: String, prompt2: String? = nil, clipSkip: Int = 0,
                                 emphasis: PromptEmphasis = .diffusers) throws -> (Tensor, Tensor) {
        guard let te2 = bundle.textEncoder2, let tok2 = bundle.tokenizer2 else {
            throw PipelineError("SDXL needs text_encoder_2 (CLIPTextModelWithProjection) and tokenizer_2")
        }
        if emphasis != .diffusers { return try encodeSDXLWeighted(prompt2 ?? text, clipSkip: clipSkip, emphasis: emphasis) }
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

    /// AUTOMATIC1111's SDXL prompt conditioning (sd_hijack_clip.py with FrozenCLIPEmbedderForSDXLWithCustomWords and
    /// FrozenOpenCLIPEmbedder2WithCustomWords): each encoder tokenizes the prompt into 75-token chunks (emphasis
    /// weights, BREAK; text_encoder_2's chunks padded with its pad token after the first EOS), encodes every chunk on its
    /// own to its penultimate hidden states (no final layer norm), weights them with the emphasis mode's rule, and
    /// concatenates the chunks on the token axis; the two encoders' states are concatenated on the feature axis and
    /// the pooled embedding is text_encoder_2's projected pooled output of the first chunk (not weighted).
    public func encodeSDXLWeighted(_ text: String, clipSkip: Int = 0, emphasis: PromptEmphasis) throws -> (Tensor, Tensor) {
        guard let te2 = bundle.textEncoder2, let tok2 = bundle.tokenizer2 else {
            throw PipelineError("SDXL needs text_encoder_2 (CLIPTextModelWithProjection) and tokenizer_2")
        }
        let k = clipSkip + 1
        let weighted = emphasis == .original || emphasis == .noNorm
        let normalize = emphasis == .original
        return try GradMode.noGrad { () throws -> (Tensor, Tensor) in
            func chunks(_ wp: WeightedPrompt, _ encode: ([Int]) throws -> Tensor) throws -> Tensor {
                let parts = try zip(wp.chunks, wp.weights).map { ids, w -> Tensor in
                    let h = try encode(ids)
                    return weighted ? try applyEmphasis(h, weights: w, normalize: normalize) : h
                }
                return parts.count == 1 ? parts[0] : concat(parts, axis: 1)
            }
            var hidden: [Tensor] = []
            if let te1 = bundle.textEncoder, let tok1 = bundle.tokenizer {
                hidden.append(try chunks(tok1.weightedPrompt(text, emphasis: emphasis != .none)) {
                    try te1.hiddenStateAndPooled([$0], fromEnd: k).hidden
                })
            }
            var pooled: Tensor?
            hidden.append(try chunks(tok2.weightedPrompt(text, emphasis: emphasis != .none)) {
                let (h, e) = try te2.hiddenStateAndTextEmbeds([$0], fromEnd: k)
                if pooled == nil { pooled = e }
                return h
            })
            guard let pooled, hidden.allSatisfy({ $0.shape[1] == hidden[0].shape[1] }) else {
                throw PipelineError("SDXL: the two tokenizers cut the prompt into different chunk counts (\(hidden.map { $0.shape[1] }) tokens)")
            }
            return (concat(hidden, axis: 2), pooled)
        }
    }

    /// The Denoiser of the SDXL pipelines' __call__ (prompt embeddings, pooled embeddings, add_time_ids):
    /// StableDiffusionXLPipeline's time ids when `imageSize` is nil, the image-to-image / inpainting pipelines' ones
    /// (aesthetic scores for a refiner) for latents decoding to `imageSize`.
    func sdxlDenoiser(_ p: PromptOptions, batch: Int, imageSize: (height: Int, width: Int)? = nil) throws -> Denoiser {
        guard imageSize != nil || !bundle.requiresAestheticsScore else {
            throw PipelineError.wrongModelKind(model: bundle.url.path, kind: bundle.kind, task: .txt2img)
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
        let (cond, pooled) = try encodeSDXLPrompt(p.prompt, clipSkip: p.clipSkip, emphasis: p.emphasis)
        var uncond: Tensor?, uncondPooled: Tensor?
        if guidance {
            if p.negativePrompt.isEmpty && bundle.forceZerosForEmptyPrompt {
                // zeros of the empty prompt's shape: one window (the web UI's force_zero_embeddings of one chunk)
                let window = p.emphasis == .diffusers ? cond.shape[1] : 77  // 75 tokens, BOS, EOS
                uncond = Tensor(zeros: [1, window, cond.shape[2]])
                uncondPooled = Tensor(zeros: pooled.shape)
            } else {
                (uncond, uncondPooled) = try encodeSDXLPrompt(p.negativePrompt, clipSkip: p.clipSkip, emphasis: p.emphasis)
            }
        }
        let rep = { (t: Tensor) in batch == 1 ? t : concat([Tensor](repeating: t, count: batch), axis: 0) }
        let rows: (Int) -> Tensor, negRows: (Int) -> Tensor
        if let (h, w) = imageSize {
            // add_time_ids.repeat(B, 1), cat([add_neg_time_ids.repeat(B, 1), add_time_ids]) for [uncond, cond]
            let (ids, negIDs) = p.sizeConditioning.imageTimeIDs(height: h, width: w, aesthetic: bundle.requiresAestheticsScore)
            rows = { _ in Tensor([Float]((0..<batch).flatMap { _ in ids }), shape: [batch, ids.count]) }
            negRows = { _ in Tensor([Float]((0..<batch).flatMap { _ in negIDs }), shape: [batch, negIDs.count]) }
        } else {
            let (h, w) = size(p)
            let (ids, negIDs) = p.sizeConditioning.timeIDs(height: h, width: w)
            // StableDiffusionXLPipeline builds cat([negative_add_time_ids, add_time_ids]).repeat(batch, 1) for the 2B
            // rows [uncond, cond]: row r takes the negative ids when r is even. With more than one image and distinct
            // negative size conditioning, uncond and cond rows therefore alternate; reproduced as is for seed parity.
            rows = { first in Tensor([Float]((first..<(first + batch)).flatMap { uncond == nil ? ids : ($0 % 2 == 0 ? negIDs : ids) }),
                                     shape: [batch, ids.count]) }
            negRows = rows
        }
        let den = Denoiser(unet: bundle.unet, guidanceScale: Float(p.guidanceScale), context: rep(cond), uncondContext: uncond.map(rep))
        evictAfterPromptEncoding(den)
        den.addedCond = AddedConditions(textEmbeds: rep(pooled), timeIds: rows(uncond == nil ? 0 : batch))
        if let up = uncondPooled { den.uncondAddedCond = AddedConditions(textEmbeds: rep(up), timeIds: negRows(0)) }
        if let dim = bundle.unet.config.timeCondProjDim {
            den.timestepCond = UNet2DConditionModel.guidanceScaleEmbedding([Float](repeating: Float(p.guidanceScale - 1), count: batch), dim: dim)
        }
        return den
    }
}
