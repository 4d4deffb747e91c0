import DiffusersBlocks
import Foundation
import NeuralNetwork
import TensorCore

// Matches diffusers models/unets/unet_2d_condition.py `UNet2DConditionModel` (SD 1.x / 2.x, inpainting with extra
// input channels, class-conditional, SDXL base/refiner with addition_embed_type "text_time") and models/unets/unet_2d.py `UNet2DModel` (unconditional / class-conditional LDM
// with legacy attention blocks): one type built from `UNetConfig`, parameters named as the diffusers state_dict.

/// SDXL's added conditions (diffusers `added_cond_kwargs`): the pooled text embedding `text_embeds` (B, P) and the
/// micro-conditioning `time_ids` (B, K): original size, crop top-left, target size (K = 6), or original size, crop
/// top-left and aesthetic score (refiner, K = 5).
public struct AddedConditions {
    public var textEmbeds: Tensor
    public var timeIds: Tensor
    public init(textEmbeds: Tensor, timeIds: Tensor) {
        self.textEmbeds = textEmbeds
        self.timeIds = timeIds
    }
}

/// The unconditional LDM UNet is the same type; its config has `_class_name` "UNet2DModel".
public typealias UNet2DModel = UNet2DConditionModel

public final class UNet2DConditionModel: Module {
    public let config: UNetConfig
    public let convIn: Conv2d
    public let timeEmbedding: TimestepEmbedding
    /// time_embedding.cond_proj (time_cond_proj_dim -> block_out_channels[0], no bias): adds a timestep condition
    /// (LCM's guidance embedding) to the sinusoidal features before linear_1, as diffusers' TimestepEmbedding.
    public let timeCondProj: Linear?
    /// num_class_embeds without class_embed_type: nn.Embedding; class_embed_type "timestep": a TimestepEmbedding.
    public let classEmbedding: Embedding?
    public let classTimestepEmbedding: TimestepEmbedding?
    /// add_embedding (addition_embed_type "text_time"): projection_class_embeddings_input_dim -> time embed dim MLP
    /// over [pooled text embedding, Fourier features of the time ids].
    public let addEmbedding: TimestepEmbedding?
    public let downBlocks: [UNetDownBlock2D]
    public let midBlock: UNetMidBlock2D?
    public let upBlocks: [UNetUpBlock2D]
    public let convNormOut: GroupNorm
    public let convOut: Conv2d

    public init(config: UNetConfig) throws {
        try config.validate()
        self.config = config
        let boc = config.blockOutChannels, n = boc.count, temb = config.timeEmbedDim
        convIn = Conv2d(config.inChannels, boc[0], kernel: config.convInKernel, padding: (config.convInKernel - 1) / 2)
        timeEmbedding = TimestepEmbedding(inChannels: boc[0], timeEmbedDim: temb)
        timeCondProj = config.timeCondProjDim.map { Linear($0, boc[0], bias: false) }
        if config.classEmbedType == "timestep" {
            classTimestepEmbedding = TimestepEmbedding(inChannels: boc[0], timeEmbedDim: temb)
            classEmbedding = nil
        } else {
            classTimestepEmbedding = nil
            classEmbedding = config.numClassEmbeds.map { Embedding($0, temb) }
        }
        addEmbedding = config.usesTextTimeEmbedding
            ? TimestepEmbedding(inChannels: config.projectionClassEmbeddingsInputDim ?? 0, timeEmbedDim: temb) : nil
        let s = BlockSettings(tembChannels: temb, groups: config.normNumGroups, eps: config.normEps,
                              timeScaleShift: config.resnetTimeScaleShift, useLinearProjection: config.useLinearProjection,
                              attnGroups: config.attnNormNumGroups, downsampleType: config.downsampleType,
                              upsampleType: config.upsampleType)
        let cross = config.crossAttentionDim
        var output = boc[0]
        downBlocks = (0..<n).map { i in
            let input = output
            output = boc[i]
            return UNetDownBlock2D(type: config.downBlockTypes[i], layers: config.layersPerBlock[i], inChannels: input,
                                   outChannels: output, addDownsample: i < n - 1, downsamplePadding: config.downsamplePadding,
                                   heads: config.transformerHeads(i), legacyHeadDim: config.legacyHeadDim(i, channels: output),
                                   transformerLayers: config.transformerLayersPerBlock[i], crossAttentionDim: cross?[i], s)
        }
        midBlock = config.midBlockType.map { type in
            UNetMidBlock2D(type: type, channels: boc[n - 1], heads: config.transformerHeads(n - 1),
                           legacyHeadDim: config.legacyHeadDim(n - 1, channels: boc[n - 1]),
                           transformerLayers: config.transformerLayersPerBlock[n - 1], crossAttentionDim: cross?[n - 1],
                           addAttention: config.addAttention, outputScaleFactor: config.midBlockScaleFactor, s)
        }
        let reversed = Array(boc.reversed())
        let reversedTransformerLayers = config.reverseTransformerLayersPerBlock ?? config.transformerLayersPerBlock.reversed()
        output = reversed[0]
        upBlocks = (0..<n).map { i in
            let prev = output
            output = reversed[i]
            let input = reversed[min(i + 1, n - 1)]
            // diffusers passes attention_head_dim[i] (not reversed) and the reversed head counts to the up blocks.
            return UNetUpBlock2D(type: config.upBlockTypes[i], layers: config.layersPerBlock[n - 1 - i] + 1, inChannels: input,
                                 outChannels: output, prevOutputChannels: prev, addUpsample: i < n - 1,
                                 heads: config.transformerHeads(n - 1 - i), legacyHeadDim: config.legacyHeadDim(i, channels: output),
                                 transformerLayers: reversedTransformerLayers[i], crossAttentionDim: cross?[n - 1 - i], s)
        }
        convNormOut = GroupNorm(groups: config.normNumGroups, channels: boc[0], eps: config.normEps)
        convOut = Conv2d(boc[0], config.outChannels, kernel: config.convOutKernel, padding: (config.convOutKernel - 1) / 2)
    }

    /// Builds the model from a diffusers `config.json`.
    public convenience init(configData: Data) throws { try self.init(config: UNetConfig.decode(configData)) }

    /// Predicts the model output (noise, v or x0 as trained) for `sample` (B, C, H, W) at `timestep` (one value or one
    /// per batch item), with `encoderHiddenStates` (B, S, cross_attention_dim) for cross-attention models and
    /// `classLabels` (B) for class-conditional ones, `timestepCond` (B, time_cond_proj_dim) for UNets with
    /// time_cond_proj_dim (optional there, as in diffusers), `addedCond` (text_embeds (B, P), time_ids (B, K)) for
    /// "text_time" UNets (SDXL; required there). Differentiable; wrap in `GradMode.noGrad` for inference.
    public func callAsFunction(sample: Tensor, timestep: [Float], encoderHiddenStates: Tensor? = nil,
                               classLabels: [Int]? = nil, timestepCond: Tensor? = nil, addedCond: AddedConditions? = nil) throws -> Tensor {
        guard sample.rank == 4, sample.shape[1] == config.inChannels else {
            throw UNetError("UNet: sample \(sample.shape) must be (B, \(config.inChannels), H, W)")
        }
        let b = sample.shape[0]
        guard timestep.count == 1 || timestep.count == b else { throw UNetError("UNet: \(timestep.count) timesteps for batch \(b)") }
        let usesCross = downBlocks.contains { $0.attentions.first is Transformer2DModel }
            || upBlocks.contains { $0.attentions.first is Transformer2DModel } || midBlock?.attentions.first is Transformer2DModel
        if usesCross {
            guard let ctx = encoderHiddenStates, ctx.rank == 3, ctx.shape[0] == b, ctx.shape[2] == config.crossAttentionDim?.first else {
                throw UNetError("UNet: encoderHiddenStates \(encoderHiddenStates?.shape ?? []) must be (\(b), S, \(config.crossAttentionDim?.first ?? 0))")
            }
        }
        let steps = timestep.count == 1 ? [Float](repeating: timestep[0], count: b) : timestep
        let proj = { (t: [Float]) in
            timestepEmbedding(t, dim: self.config.blockOutChannels[0], flipSinToCos: self.config.flipSinToCos,
                              downscaleFreqShift: self.config.freqShift)
        }
        var tFeatures = proj(steps)
        if let cond = timestepCond {
            guard let p = timeCondProj else { throw UNetError("UNet: timestepCond given but the model has no time_cond_proj_dim") }
            guard cond.shape == [b, p.weight.shape[1]] else {
                throw UNetError("UNet: timestepCond \(cond.shape) must be (\(b), \(p.weight.shape[1]))")
            }
            tFeatures = tFeatures + p(cond)
        }
        var emb = timeEmbedding(tFeatures)
        if classEmbedding != nil || classTimestepEmbedding != nil {
            guard let labels = classLabels, labels.count == b else {
                throw UNetError("UNet: class-conditional model needs \(b) class labels, got \(classLabels?.count ?? 0)")
            }
            if let table = classEmbedding {
                let count = table.weight.shape[0]
                guard labels.allSatisfy({ $0 >= 0 && $0 < count }) else { throw UNetError("UNet: class labels \(labels) outside 0..<\(count)") }
                emb = emb + table(labels, shape: [b])
            } else if let te = classTimestepEmbedding {
                emb = emb + te(proj(labels.map(Float.init)))
            }
        } else if classLabels != nil {
            throw UNetError("UNet: classLabels given but the model has no class embedding")
        }
        if let add = addEmbedding {
            guard let cond = addedCond else { throw UNetError("UNet: an SDXL (text_time) UNet needs text_embeds and time_ids") }
            emb = emb + add(try textTimeFeatures(cond, batch: b))
        } else if addedCond != nil {
            throw UNetError("UNet: text_embeds / time_ids given but the model has no addition_embed_type text_time")
        }
        let tembAct = emb.silu()
        var h = config.centerInputSample ? sample * 2 - 1 : sample
        h = convIn(h)
        var skips = [h]
        for block in downBlocks {
            let (out, states) = block(h, tembAct: tembAct, context: encoderHiddenStates)
            h = out
            skips += states
        }
        if let midBlock { h = midBlock(h, tembAct: tembAct, context: encoderHiddenStates) }
        for block in upBlocks {
            let remaining = skips.count - block.resnets.count
            let size = remaining > 0 ? (skips[remaining - 1].shape[2], skips[remaining - 1].shape[3]) : nil
            h = block(h, skips: &skips, tembAct: tembAct, context: encoderHiddenStates, upsampleSize: size)
        }
        return convOut(convNormOut(h, silu: true))
    }

    public func callAsFunction(sample: Tensor, timestep: Float, encoderHiddenStates: Tensor? = nil,
                               classLabels: [Int]? = nil, timestepCond: Tensor? = nil, addedCond: AddedConditions? = nil) throws -> Tensor {
        try self(sample: sample, timestep: [timestep], encoderHiddenStates: encoderHiddenStates, classLabels: classLabels,
                 timestepCond: timestepCond, addedCond: addedCond)
    }

    /// The input of add_embedding: [text_embeds, add_time_proj(time_ids.flatten()).reshape(B, -1)] (diffusers
    /// get_aug_embed for "text_time"; add_time_proj is Timesteps(addition_time_embed_dim, flip_sin_to_cos, freq_shift)).
    func textTimeFeatures(_ cond: AddedConditions, batch b: Int) throws -> Tensor {
        let dim = config.additionTimeEmbedDim ?? 0, inputDim = config.projectionClassEmbeddingsInputDim ?? 0
        let text = cond.textEmbeds, ids = cond.timeIds
        guard text.rank == 2, text.shape[0] == b, ids.rank == 2, ids.shape[0] == b,
              text.shape[1] + ids.shape[1] * dim == inputDim else {
            throw UNetError("UNet: text_embeds \(text.shape) and time_ids \(ids.shape) must be (\(b), P) and (\(b), K) with P + K * \(dim) = \(inputDim)")
        }
        let features = timestepEmbedding(ids.contiguous().toArray(), dim: dim, flipSinToCos: config.flipSinToCos,
                                         downscaleFreqShift: config.freqShift)
        return concat([text, features.reshaped([b, ids.shape[1] * dim])], axis: 1)
    }

    /// LatentConsistencyModelPipeline.get_guidance_scale_embedding (VDM's sinusoidal embedding of w * 1000, float32):
    /// the `timestepCond` of an LCM-distilled UNet for guidance weights `w` (the pipeline passes guidance_scale - 1).
    public static func guidanceScaleEmbedding(_ w: [Float], dim: Int) -> Tensor {
        let half = dim / 2
        let step = Float(Foundation.log(Float(10000))) / Float(half - 1)
        let freqs = (0..<half).map { Foundation.exp(Float($0) * -step) }
        var out = [Float](repeating: 0, count: w.count * dim)
        for (n, wn) in w.enumerated() {
            let scaled = wn * 1000
            for i in 0..<half {
                let arg = scaled * freqs[i]
                out[n * dim + i] = Foundation.sin(arg)
                out[n * dim + half + i] = Foundation.cos(arg)
            }
        }
        return Tensor(out, shape: [w.count, dim])
    }

    public var namedParameters: [(String, Tensor)] {
        scoped("conv_in", convIn) + scoped("time_embedding", timeEmbedding)
            + scoped("time_embedding.cond_proj", timeCondProj) + scoped("class_embedding", classEmbedding)
            + scoped("class_embedding", classTimestepEmbedding) + scoped("add_embedding", addEmbedding) + scoped("down_blocks", downBlocks) + scoped("mid_block", midBlock)
            + scoped("up_blocks", upBlocks) + scoped("conv_norm_out", convNormOut) + scoped("conv_out", convOut)
    }
}
