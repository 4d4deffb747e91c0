// Follows diffusers src/diffusers/models/upsampling.py `Upsample2D` (use_conv=True, interpolate "nearest"). CompVis:
// Upsample in ldm/modules/diffusionmodules/model.py and openaimodel.py.
import NeuralNetwork
import TensorCore

/// Nearest-neighbour resize (2x, or to `size` as diffusers' upsample_size) followed by a 3x3 conv.
public final class Upsample2D: Module {
    public let conv: Conv2d
    public init(channels: Int, outChannels: Int? = nil) { conv = Conv2d(channels, outChannels ?? channels, kernel: 3, padding: 1) }
    public func callAsFunction(_ x: Tensor, size: (Int, Int)? = nil) -> Tensor {
        let (h, w) = size ?? (x.shape[2] * 2, x.shape[3] * 2)
        // The 2x case runs the convolution on the input rows directly, without materialising the upsampled input.
        if h == x.shape[2] * 2 && w == x.shape[3] * 2 { return conv.upsampling(x, factor: 2) }
        return conv(x.upsampleNearest(height: h, width: w))
    }
    public var namedParameters: [(String, Tensor)] { scoped("conv", conv) }
}
