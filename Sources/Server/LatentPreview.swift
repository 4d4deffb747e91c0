// Live previews decoded cheaply from the current latents, in the spirit of AUTOMATIC1111's "Approx cheap" preview
// (modules/sd_samplers_common.py samples_to_images_tensor with approximation 3: a fixed linear map from the 4 latent
// channels to RGB). Its coefficients were fitted for the SD 1.x VAE; to serve any first stage, the linear map is
// measured from the model's own decoder once at load: the mean RGB of decode(+e_c) and decode(-e_c) for each latent
// channel c on a small constant latent (2C + 1 decodes of an 8x8 latent), then each latent pixel costs C x 3
// multiply-adds instead of a VAE decode.
import Foundation
import Imaging
import Pipelines

public struct LatentPreview: Sendable {
    /// weights[c][k]: RGB channel k's change per unit of latent channel c; bias[k]: decode(0). In [-1, 1] units.
    public let weights: [[Float]]
    public let bias: [Float]
    public let factor: Int

    public init(weights: [[Float]], bias: [Float], factor: Int) {
        self.weights = weights
        self.bias = bias
        self.factor = factor
    }

    public init(bundle: ModelBundle) throws {
        let c = bundle.latentChannels, side = 8
        func meanRGB(_ value: Float, channel: Int?) throws -> [Float] {
            var z = [Float](repeating: 0, count: c * side * side)
            if let ch = channel { for i in 0..<(side * side) { z[ch * side * side + i] = value } }
            let r = try decodeLatents(z, shape: [1, c, side, side], firstStage: bundle.firstStage)
            let n = r.decoded.count / 3
            return (0..<3).map { k in r.decoded[(k * n)..<((k + 1) * n)].reduce(0, +) / Float(n) }
        }
        let b = try meanRGB(0, channel: nil)
        var w: [[Float]] = []
        for ch in 0..<c {
            let plus = try meanRGB(1, channel: ch), minus = try meanRGB(-1, channel: ch)
            w.append((0..<3).map { (plus[$0] - minus[$0]) / 2 })
        }
        self.init(weights: w, bias: b, factor: bundle.vaeScaleFactor)
    }

    /// The preview of the first image of a (B, C, h, w) latent batch, at the output size (nearest upscaling).
    public func image(latents: [Float], shape: [Int]) -> RGBImage? {
        guard shape.count == 4, shape[1] == weights.count, latents.count >= shape[1] * shape[2] * shape[3] else { return nil }
        let (c, h, w) = (shape[1], shape[2], shape[3])
        let f = max(1, min(factor, 8))
        var px = [UInt8](repeating: 0, count: h * f * w * f * 3)
        for y in 0..<h {
            for x in 0..<w {
                var rgb = bias
                for ch in 0..<c {
                    let z = latents[(ch * h + y) * w + x]
                    for k in 0..<3 { rgb[k] += weights[ch][k] * z }
                }
                let v = rgb.map { UInt8(max(0, min(255, (($0 + 1) / 2 * 255).rounded()))) }
                for dy in 0..<f {
                    for dx in 0..<f {
                        let o = ((y * f + dy) * w * f + x * f + dx) * 3
                        px[o] = v[0]
                        px[o + 1] = v[1]
                        px[o + 2] = v[2]
                    }
                }
            }
        }
        return try? RGBImage(width: w * f, height: h * f, pixels: px)
    }
}
