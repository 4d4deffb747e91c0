// Matches diffusers AutoencoderKL (models/autoencoders/autoencoder_kl.py): Encoder with double_z, optional
// quant_conv / post_quant_conv (1x1), Decoder; encode returns a DiagonalGaussianDistribution. CompVis:
// ldm/models/autoencoder.py AutoencoderKL. Tiled encode/decode: TiledVAE.swift; loading: VAELoading.swift.
import NeuralNetwork
import TensorCore

/// When encode/decode split the image into overlapping tiles (diffusers enable_tiling).
public enum TileMode: Sendable { case auto, always, never }

/// Tiling parameters (diffusers: tile_sample_min_size = config.sample_size, tile_overlap_factor 0.25).
public struct TilingOptions: Sendable, Equatable {
    /// Tile size in image pixels; latent tiles are this / the downsampling factor.
    public var tileSampleMinSize: Int
    public var tileOverlapFactor: Float = 0.25
    /// `.auto` tiles when the image (or the decoded image) has more pixels than this and a side exceeds a tile.
    public var autoTileArea: Int = 1024 * 1024
    public init(tileSampleMinSize: Int, tileOverlapFactor: Float = 0.25, autoTileArea: Int = 1024 * 1024) {
        self.tileSampleMinSize = tileSampleMinSize
        self.tileOverlapFactor = tileOverlapFactor
        self.autoTileArea = autoTileArea
    }
}

public final class AutoencoderKL: Module {
    public let config: AutoencoderKLConfig
    public let encoder: VAEEncoder
    public let decoder: VAEDecoder
    public let quantConv: Conv2d?
    public let postQuantConv: Conv2d?
    public var tiling: TilingOptions
    /// diffusers use_slicing: encode/decode batch entries one at a time (less peak memory, same results).
    public var useSlicing = false
    /// What the last `load(folder:)` / `loadCompVis` found (loaded, unexpected keys).
    public var loadReport: LoadReport?

    public init(config: AutoencoderKLConfig) throws {
        try config.validate()
        self.config = config
        let a = config.architecture
        encoder = VAEEncoder(a, doubleZ: true)
        decoder = VAEDecoder(a)
        let l = config.latentChannels
        quantConv = config.useQuantConv ? Conv2d(2 * l, 2 * l, kernel: 1) : nil
        postQuantConv = config.usePostQuantConv ? Conv2d(l, l, kernel: 1) : nil
        tiling = TilingOptions(tileSampleMinSize: config.sampleSize)
    }

    public var namedParameters: [(String, Tensor)] {
        scoped("encoder", encoder) + scoped("decoder", decoder) + scoped("quant_conv", quantConv) + scoped("post_quant_conv", postQuantConv)
    }

    public var downsamplingFactor: Int { config.architecture.downsamplingFactor }

    /// Encoder + quant_conv on the whole image: the moments (B, 2 * latent, H / f, W / f).
    public func encodeMoments(_ x: Tensor) -> Tensor {
        let h = encoder(x)
        return quantConv?(h) ?? h
    }

    /// post_quant_conv + decoder on the whole latent.
    public func decodeWhole(_ z: Tensor) -> Tensor { decoder(postQuantConv?(z) ?? z) }

    /// The posterior of images x (B, in_channels, H, W), H and W multiples of the downsampling factor.
    public func encode(_ x: Tensor, tiled: TileMode = .auto) throws -> DiagonalGaussianDistribution {
        try checkInput(x, channels: config.inChannels, what: "image", multiple: downsamplingFactor)
        return GradMode.noGrad {
            DiagonalGaussianDistribution(sliced(x) { shouldTileEncode($0, tiled) ? tiledEncodeMoments($0) : encodeMoments($0) })
        }
    }

    /// Images for latents z (B, latent_channels, h, w) (unscaled: divide diffusion latents by scaling_factor first,
    /// or use `decodeScaled`).
    public func decode(_ z: Tensor, tiled: TileMode = .auto) throws -> Tensor {
        try checkInput(z, channels: config.latentChannels, what: "latents", multiple: 1)
        return GradMode.noGrad { sliced(z) { shouldTileDecode($0, tiled) ? tiledDecode($0) : decodeWhole($0) } }
    }

    private func sliced(_ x: Tensor, _ f: (Tensor) -> Tensor) -> Tensor {
        guard useSlicing, x.shape[0] > 1 else { return f(x) }
        return concat((0..<x.shape[0]).map { f(x.narrow(0, $0, 1)) }, axis: 0)
    }

    /// Diffusion latents -> model latents: z / scaling_factor + shift_factor.
    public func unscale(_ latents: Tensor) -> Tensor {
        let z = latents * (1 / config.scalingFactor)
        return config.shiftFactor.map { z + $0 } ?? z
    }
    /// Model latents -> diffusion latents: (z - shift_factor) * scaling_factor.
    public func scale(_ z: Tensor) -> Tensor {
        (config.shiftFactor.map { z - $0 } ?? z) * config.scalingFactor
    }
    public func decodeScaled(_ latents: Tensor, tiled: TileMode = .auto) throws -> Tensor { try decode(unscale(latents), tiled: tiled) }

    /// diffusers forward: encode, take the posterior mode (or a sample), decode.
    public func reconstruct(_ x: Tensor, samplePosterior: Bool = false, generator: RandomSource? = nil, tiled: TileMode = .auto) throws -> Tensor {
        let posterior = try encode(x, tiled: tiled)
        let z: Tensor
        if samplePosterior {
            guard let generator else { throw AutoencoderError("samplePosterior needs a generator") }
            z = posterior.sample(generator: generator)
        } else { z = posterior.mode() }
        return try decode(z, tiled: tiled)
    }

    /// The diffusers Stable Diffusion VAE (block_out_channels [128, 256, 512, 512], 2 layers per block, 4 latent
    /// channels) with torch-default-style random weights from `seed`, for benchmarks.
    public static func randomStableDiffusion(seed: UInt64 = 0) -> AutoencoderKL {
        // The configuration is a constant that validates.
        let m = try! AutoencoderKL(config: .stableDiffusion)
        initializeParameters(m, generator: TorchGenerator(seed: seed))
        return m
    }
}

func checkInput(_ x: Tensor, channels: Int, what: String, multiple: Int) throws {
    guard x.rank == 4, x.shape[1] == channels, x.shape[0] > 0, x.shape[2] > 0, x.shape[3] > 0 else {
        throw AutoencoderError("\(what) of shape \(x.shape): expected (B, \(channels), H, W)")
    }
    guard x.shape[2] % multiple == 0, x.shape[3] % multiple == 0 else {
        throw AutoencoderError("\(what) of shape \(x.shape): height and width must be multiples of \(multiple)")
    }
}
