// Follows diffusers src/diffusers/models/downsampling.py `Downsample2D` (use_conv=True). CompVis: Downsample in
// ldm/modules/diffusionmodules/model.py (the VAE: pad (0, 1, 0, 1), stride-2 conv) and openaimodel.py (padding 1).
import NeuralNetwork
import TensorCore

/// A 3x3 conv with stride 2. `padding` 0 means F.pad(0, 1, 0, 1) first (one zero row at the bottom and one column at
/// the right), as diffusers does for the VAE (downsample_padding 0); the UNet uses padding 1.
public final class Downsample2D: Module {
    public let conv: Conv2d
    public init(channels: Int, outChannels: Int? = nil, padding: Int = 1) {
        conv = Conv2d(channels, outChannels ?? channels, kernel: 3, stride: 2, padding: padding)
        if padding == 0 { conv.options.padding = (top: 0, left: 0, bottom: 1, right: 1) }
    }
    public func callAsFunction(_ x: Tensor) -> Tensor { conv(x) }
    public var namedParameters: [(String, Tensor)] { scoped("conv", conv) }
}
