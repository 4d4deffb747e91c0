import ArgumentParser
import Autoencoders
import Checkpoints
import CompVis
import Foundation
import Imaging
import NeuralNetwork
import TensorCore
import Yams

/// `ldm autoencode`: encode an image with a first-stage model and decode it again (the paper's E and D), printing the
/// latent shape and the reconstruction PSNR; optionally saving the latent.
struct Autoencode: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Encode and decode an image through a KL or VQ autoencoder; prints PSNR and the latent shape.")

    @Option(help: "A diffusers folder (vae/ or vqvae/ inside, or the component folder), or a CompVis checkpoint with --config.")
    var model: String
    @Option(help: "CompVis YAML config for a .ckpt/.safetensors checkpoint (first_stage_config, or a bare autoencoder config).")
    var config: String?
    @Option(help: "Input image (PNG or JPEG); width and height must be multiples of the model's downsampling factor.")
    var input: String
    @Option(help: "Output PNG of the reconstruction.") var output: String
    @Option(help: "Also save the latent (mode of the posterior / pre-quantization latent) as safetensors.") var latents: String?
    @Option(help: "Tiled VAE: auto, always, never.") var tiled: String = "auto"
    @Flag(help: "Replace existing output files.") var overwrite = false

    func validate() throws {
        guard ["auto", "always", "never"].contains(tiled) else { throw ValidationError("--tiled must be auto, always or never, not '\(tiled)'") }
        guard FileManager.default.fileExists(atPath: model) else { throw ValidationError("--model \(model): no such file or folder") }
        guard FileManager.default.isReadableFile(atPath: input) else { throw ValidationError("--input \(input): no such readable file") }
        if let config, !FileManager.default.isReadableFile(atPath: config) { throw ValidationError("--config \(config): no such readable file") }
        for path in [output] + (latents.map { [$0] } ?? []) where !overwrite && FileManager.default.fileExists(atPath: path) {
            throw ValidationError("\(path) exists; pass --overwrite to replace it")
        }
    }

    func run() throws {
        let first = try loadModel()
        let factor: Int
        switch first {
            case .kl(let m): factor = m.downsamplingFactor
            case .vq(let m): factor = m.config.architecture.downsamplingFactor
        }
        let image = try ImageIO.load(path: input).image
        guard image.width % factor == 0, image.height % factor == 0 else {
            throw ValidationError("\(input) is \(image.width)x\(image.height); both sides must be multiples of \(factor) for this model")
        }
        let x = Tensor(VaeImageProcessor.toTensor(image), shape: [1, 3, image.height, image.width])
        let mode: TileMode = tiled == "always" ? .always : (tiled == "never" ? .never : .auto)
        let (latent, recon): (Tensor, Tensor) = try GradMode.noGrad {
            switch first {
            case .kl(let m):
                let z = try m.encode(x, tiled: mode).mode()
                return (z, try m.decode(z, tiled: mode))
            case .vq(let m):
                let h = try m.encode(x)
                return (h, try m.decode(h))
            }
        }
        let out = try VaeImageProcessor.toImage(recon.toArray(), height: image.height, width: image.width)
        try out.writePNG(to: output, overwrite: overwrite)
        print("latent shape: \(latent.shape)  (scaling factor \(first.scalingFactor))")
        print(String(format: "PSNR: %.2f dB", psnr(image.pixels, out.pixels)))
        if let latents {
            let c = latent.contiguous()
            let data = withExtendedLifetime(c) { Data(bytes: c.data, count: c.count * 4) }
            if overwrite { try? FileManager.default.removeItem(atPath: latents) }
            try SafeTensors.write([SafeTensorsEntry(name: "latents", dtype: .F32, shape: c.shape, bytes: data)],
                                  metadata: ["scaling_factor": "\(first.scalingFactor)", "source": input], to: URL(fileURLWithPath: latents))
            print("latents written to \(latents)")
        }
    }

    func loadModel() throws -> FirstStageModel {
        var isDir: ObjCBool = false
        FileManager.default.fileExists(atPath: model, isDirectory: &isDir)
        if isDir.boolValue { return try FirstStageModel.load(folder: URL(fileURLWithPath: model)).model }
        guard let config else {
            throw ValidationError("\(model) is a single checkpoint file: pass its CompVis YAML with --config (or convert it with `ldm convert --to diffusers`)")
        }
        let text = try String(contentsOfFile: config, encoding: .utf8)
        guard let yaml = try Yams.load(yaml: text) as? [String: Any] else { throw ValidationError("\(config) is not a YAML mapping") }
        return try FirstStageModel.loadCompVis(checkpoint: URL(fileURLWithPath: model), yaml: yaml).model
    }
}

/// Peak signal-to-noise ratio of two 8-bit images, in dB.
func psnr(_ a: [UInt8], _ b: [UInt8]) -> Double {
    let mse = zip(a, b).reduce(0.0) { $0 + pow(Double($1.0) - Double($1.1), 2) } / Double(max(a.count, 1))
    return mse == 0 ? .infinity : 10 * log10(255 * 255 / mse)
}
