// Semantic image synthesis with a CompVis LatentDiffusion whose cond stage is SpatialRescaler
// (models/ldm/semantic_synthesis256|512/config.yaml: cond_stage_key segmentation, concat_mode true, VQ f = 4, UNet
// in_channels 6). The label map becomes a one-hot float tensor (B, n_labels, H, W) as the training data builds it
// (taming-transformers sflckr.py `np.eye(n_labels)[segmentation]`, DDPM.get_input: b h w c -> b c h w, .float());
// LatentDiffusion.get_learned_conditioning runs SpatialRescaler.encode on it (n_stages interpolations by the
// multiplier, then the 1x1 channel mapper), giving c at the latent size, and every UNet call sees cat([x, c], dim=1)
// (DiffusionWrapper, conditioning_key concat). Sampling runs through the one denoising loop (CompVis' DDIMSampler is
// DDIM with the YAML's betas, leading spacing + 1), decoding z / scale_factor through the VQ first stage
// (decode_first_stage, quantized), as for bsr_sr.
import Conditioning
import Foundation
import Imaging
import TensorCore
import UNetModels

/// What a semantic-synthesis model asks of its label maps, derived from its YAML (before weights are read).
public struct SemanticSynthesisGeometry: Equatable, Sendable {
    /// One-hot channels: SpatialRescaler in_channels (182 for the Landscapes models: COCO-Stuff's labels).
    public let labelCount: Int
    /// Channels concatenated to the latents: out_channels (or in_channels without a channel mapper).
    public let conditionChannels: Int
    public let stages: Int
    public let multiplier: Float
    /// The first stage's downsampling factor f (4 for VQ-f4).
    public let firstStageFactor: Int
    /// Downsamplings inside the UNet (len(channel_mult) - 1): the latent must divide by 2^this.
    public let unetDownsamplings: Int

    /// Image sides must be multiples of f * 2^(UNet downsamplings) (CompVis' Upsample doubles, then concatenates
    /// the skip connection: other sizes fail in the reference too).
    public var sizeMultiple: Int { firstStageFactor << unetDownsamplings }

    init(rescaler: SpatialRescaler, unet: UNetConfig, firstStageFactor f: Int, latentChannels: Int) throws {
        guard let mapper = rescaler.channelMapper else {
            throw PipelineError.invalidModelConfig("SpatialRescaler without out_channels is not supported (semantic synthesis maps the one-hot labels to a few channels)")
        }
        labelCount = mapper.weight.shape[1]
        conditionChannels = mapper.weight.shape[0]
        stages = rescaler.stages
        multiplier = rescaler.multiplier
        firstStageFactor = f
        unetDownsamplings = max(unet.downBlockTypes.count - 1, 0)
        guard unet.crossAttentionDim == nil else {
            throw PipelineError.invalidModelConfig("cond_stage_config SpatialRescaler (concat) needs a UNet without context_dim")
        }
        guard unet.inChannels == latentChannels + conditionChannels, unet.outChannels == latentChannels else {
            throw PipelineError.invalidModelConfig("the UNet's in_channels \(unet.inChannels) / out_channels \(unet.outChannels) do not fit: "
                                + "in_channels must be the first stage's \(latentChannels) latent channels + SpatialRescaler out_channels "
                                + "\(conditionChannels) = \(latentChannels + conditionChannels), out_channels \(latentChannels)")
        }
        for k in 1...3 {
            let side = k * sizeMultiple
            guard rescaledSize(side) == side / f else {
                throw PipelineError.invalidModelConfig("SpatialRescaler (n_stages \(stages), multiplier \(multiplier)) maps a \(side)-pixel side to "
                                    + "\(rescaledSize(side)), but the latents are \(side / f) (first stage f = \(f)); it cannot condition this model")
            }
        }
    }

    /// The side after the rescaler: floor(side * multiplier) per stage, as F.interpolate(scale_factor=...).
    public func rescaledSize(_ side: Int) -> Int {
        var s = side
        for _ in 0..<stages { s = Int((Double(s) * Double(multiplier)).rounded(.down)) }
        return s
    }

    /// Image (= label map) sizes this model can sample.
    public func checkSize(width: Int, height: Int, what: String = "image") throws {
        for (name, v) in [("width", width), ("height", height)] {
            guard v > 0, v <= maxImageDimension else { throw PipelineError.invalidArgument(name: "\(what) \(name)", value: "\(v)", why: "\(v) is outside 1...\(maxImageDimension)") }
            guard v % sizeMultiple == 0 else {
                throw PipelineError.invalidArgument(name: "\(what) \(name)", value: "\(v)",
                                                    why: "\(v) is not a multiple of \(sizeMultiple) (this model: first stage f = \(firstStageFactor), "
                                                         + "\(unetDownsamplings) UNet downsampling\(unetDownsamplings == 1 ? "" : "s"))")
            }
        }
    }

    /// The class indices of a label map with `offset` added as 8-bit arithmetic (taming's shift_segmentation is
    /// offset 1 on uint8: 255 "unlabeled" becomes 0), each checked to be below `labelCount`; `name` (the file) and
    /// the first offending pixel are named in the error.
    public func labels(_ map: GrayImage, offset: Int = 0, name: String) throws -> GrayImage {
        guard (-255...255).contains(offset) else { throw PipelineError.invalidArgument(name: "label offset", value: "\(offset)", why: "must be in -255...255, got \(offset)") }
        var out = map
        if offset != 0 { out.pixels = map.pixels.map { UInt8(truncatingIfNeeded: Int($0) + offset) } }
        if let i = out.pixels.firstIndex(where: { Int($0) >= labelCount }) {
            let bad = out.pixels.reduce(0) { $0 + (Int($1) >= labelCount ? 1 : 0) }
            let v = out.pixels[i]
            throw PipelineError("\(name): pixel (\(i % map.width), \(i / map.width)) has class index \(v)"
                                + (offset != 0 ? " (\(map.pixels[i]) in the file, label offset \(offset))" : "")
                                + (bad > 1 ? ", as \(bad - 1) other pixel\(bad == 2 ? "" : "s") have an index out of range" : "")
                                + "; the model has \(labelCount) labels (0...\(labelCount - 1), its SpatialRescaler in_channels)"
                                + (offset == 0 && v == 255 ? "; 255 often marks unlabeled pixels: a label offset of 1 maps it to 0 as taming's shift_segmentation does" : ""))
        }
        return out
    }

    /// np.eye(labelCount)[labels] as a (1, labelCount, H, W) float tensor.
    func oneHot(_ labels: GrayImage) -> Tensor {
        let hw = labels.width * labels.height
        var x = [Float](repeating: 0, count: labelCount * hw)
        for (i, v) in labels.pixels.enumerated() { x[Int(v) * hw + i] = 1 }
        return Tensor(x, shape: [1, labelCount, labels.height, labels.width])
    }
}

extension LatentDiffusionPipeline {
    /// Samples images for a label map (class index per pixel, the image's size; see SemanticSynthesisGeometry).
    /// `batchSize` images share the map, with one noise draw of the whole batch.
    public func semanticSynthesis(_ labels: GrayImage, _ o: SamplingOptions, generator: RandomSource,
                                  progress: ProgressHandler? = nil) throws -> GenerationResult {
        try o.validate()
        guard let rescaler = bundle.spatialRescaler, let g = bundle.semanticSynthesis else {
            throw PipelineError.wrongModelKind(model: bundle.url.path, kind: bundle.kind, task: .semantic)
        }
        try g.checkSize(width: labels.width, height: labels.height, what: "segmentation map")
        _ = try g.labels(labels, name: "segmentation map")
        let f = g.firstStageFactor
        let (h, w) = (labels.height / f, labels.width / f)
        let c = try GradMode.noGrad { try rescaler(g.oneHot(labels)) }.contiguous()
        guard c.shape == [1, g.conditionChannels, h, w] else {
            throw PipelineError("SpatialRescaler output \(c.shape) does not match the latents [1, \(g.conditionChannels), \(h), \(w)] (f = \(f))")
        }
        let den = Denoiser(unet: bundle.unet)
        den.concat = repeatBatch(c, o.batchSize)
        let run = try GenerationRun(o, schedulerConfig: bundle.schedulerConfig, generator: generator, progress: progress)
        return try run.generate(.noise(shape: [o.batchSize, bundle.unet.config.outChannels, h, w]), den, firstStage: bundle.firstStage,
                                scaled: bundle.superResolutionScaledDecode)
    }
}
