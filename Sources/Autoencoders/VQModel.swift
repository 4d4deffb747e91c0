// Matches diffusers VQModel (models/autoencoders/vq_model.py, norm_type "group"): Encoder without double_z,
// quant_conv to vq_embed_dim, VectorQuantizer(beta 0.25), post_quant_conv, Decoder. encode returns the
// pre-quantization latent; decode quantizes it unless force_not_quantize. CompVis: ldm/models/autoencoder.py VQModel
// (VQModelInterface.encode likewise stops before the quantizer).
import NeuralNetwork
import TensorCore

public final class VQModel: Module {
    public let config: VQModelConfig
    public let encoder: VAEEncoder
    public let quantConv: Conv2d
    public let quantize: VectorQuantizer
    public let postQuantConv: Conv2d
    public let decoder: VAEDecoder
    /// What the last `load(folder:)` / `loadCompVis` found (loaded, unexpected keys).
    public var loadReport: LoadReport?

    /// `remap` / `unknownIndex` / `saneIndexShape` / `legacy` configure the quantizer as taming's VectorQuantizer2
    /// (diffusers' VQModel always uses the defaults).
    public init(config: VQModelConfig, remap: [Int]? = nil, unknownIndex: VectorQuantizer.UnknownIndex = .random,
                saneIndexShape: Bool = false, legacy: Bool = true) throws {
        try config.validate()
        self.config = config
        let a = config.architecture
        encoder = VAEEncoder(a, doubleZ: false)
        quantConv = Conv2d(config.latentChannels, config.embedDim, kernel: 1)
        quantize = try VectorQuantizer(numEmbeddings: config.numVqEmbeddings, embedDim: config.embedDim, beta: 0.25, remap: remap,
                                       unknownIndex: unknownIndex, saneIndexShape: saneIndexShape, legacy: legacy)
        postQuantConv = Conv2d(config.embedDim, config.latentChannels, kernel: 1)
        decoder = VAEDecoder(a)
    }

    public var namedParameters: [(String, Tensor)] {
        scoped("encoder", encoder) + scoped("quant_conv", quantConv) + scoped("quantize", quantize)
            + scoped("post_quant_conv", postQuantConv) + scoped("decoder", decoder)
    }

    public var downsamplingFactor: Int { config.architecture.downsamplingFactor }

    /// The pre-quantization latent h (B, vq_embed_dim, H / f, W / f).
    public func encode(_ x: Tensor) throws -> Tensor {
        try checkInput(x, channels: config.inChannels, what: "image", multiple: downsamplingFactor)
        return GradMode.noGrad { quantConv(encoder(x)) }
    }

    /// Quantizes h (unless `forceNotQuantize`) and decodes; returns the image and the commitment loss.
    public func decodeWithLoss(_ h: Tensor, forceNotQuantize: Bool = false) throws -> (sample: Tensor, commitLoss: Tensor) {
        try checkInput(h, channels: config.embedDim, what: "latents", multiple: 1)
        return try GradMode.noGrad {
            if forceNotQuantize { return (decoder(postQuantConv(h)), Tensor(zeros: [h.shape[0]])) }
            let q = try quantize(h)
            return (decoder(postQuantConv(q.quantized)), q.loss)
        }
    }

    public func decode(_ h: Tensor, forceNotQuantize: Bool = false) throws -> Tensor {
        try decodeWithLoss(h, forceNotQuantize: forceNotQuantize).sample
    }

    /// Decodes code indices laid out as `shape` (B, H, W, D) (diffusers lookup_from_codebook).
    public func decode(indices: [Int], shape: [Int]) throws -> Tensor {
        let q = try quantize.codebookEntry(indices, shape: shape)
        return GradMode.noGrad { decoder(postQuantConv(q)) }
    }

    /// diffusers forward: encode then decode (quantizing).
    public func reconstruct(_ x: Tensor) throws -> Tensor { try decode(encode(x)) }
}
