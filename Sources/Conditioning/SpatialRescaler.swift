import Checkpoints
import NeuralNetwork
import TensorCore

// Matches CompVis ldm/modules/encoders/modules.py `SpatialRescaler`: n_stages rounds of
// F.interpolate(x, scale_factor=multiplier, mode=method) (align_corners False; with a scale factor PyTorch maps
// coordinates by 1 / multiplier, not in / out), then an optional 1x1 convolution (bias off by default) remapping the
// channels. The semantic-synthesis LDM uses it on one-hot segmentation maps (182 -> 3 channels, two halvings) as
// concat conditioning.

public final class SpatialRescaler: Module {
    public enum Method: String, Sendable { case nearest, bilinear }
    public let stages: Int, method: Method, multiplier: Float
    public let channelMapper: Conv2d?

    public init(stages: Int = 1, method: Method = .bilinear, multiplier: Float = 0.5, inChannels: Int = 3,
                outChannels: Int? = nil, bias: Bool = false) throws {
        guard stages >= 0, multiplier > 0, inChannels > 0, (outChannels ?? 1) > 0 else {
            throw ConditioningError("SpatialRescaler: n_stages \(stages), multiplier \(multiplier), channels \(inChannels) -> \(outChannels.map(String.init) ?? "same") are not valid")
        }
        self.stages = stages
        self.method = method
        self.multiplier = multiplier
        channelMapper = outChannels.map { Conv2d(inChannels, $0, kernel: 1, bias: bias) }
    }

    /// (B, C, H, W) -> (B, out_channels or C, H * multiplier^n_stages, ...), sizes floored at each stage as PyTorch.
    public func callAsFunction(_ x: Tensor) throws -> Tensor {
        guard x.rank == 4 else { throw ConditioningError("SpatialRescaler: input \(x.shape) must be (B, C, H, W)") }
        var h = x
        let scale = 1 / multiplier
        for _ in 0..<stages {
            let oh = Int((Double(h.shape[2]) * Double(multiplier)).rounded(.down))
            let ow = Int((Double(h.shape[3]) * Double(multiplier)).rounded(.down))
            guard oh > 0, ow > 0 else { throw ConditioningError("SpatialRescaler: \(x.shape) rescaled below one pixel") }
            h = method == .bilinear ? h.upsampleBilinear(height: oh, width: ow, sourceScale: (scale, scale))
                                    : h.upsampleNearest(height: oh, width: ow, sourceScale: (scale, scale))
        }
        if let channelMapper {
            guard h.shape[1] == channelMapper.weight.shape[1] else {
                throw ConditioningError("SpatialRescaler: input has \(h.shape[1]) channels, the mapper expects \(channelMapper.weight.shape[1])")
            }
            return channelMapper(h)
        }
        return h
    }

    public var namedParameters: [(String, Tensor)] { scoped("channel_mapper", channelMapper) }

    /// CompVis checkpoints store it as cond_stage_model.channel_mapper.weight.
    public static let compVisKeyRules: [KeyRule] = [.stripPrefix("cond_stage_model.")]
}
