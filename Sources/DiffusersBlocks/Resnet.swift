// Follows diffusers src/diffusers/models/resnet.py `ResnetBlock2D` (pre-norm, non-linearity SiLU, skip_time_act
// False), the block of the UNet (with a time embedding) and of the VAE (temb_channels None, eps 1e-6). CompVis:
// ResBlock in ldm/modules/diffusionmodules/openaimodel.py, ResnetBlock in ldm/modules/diffusionmodules/model.py.
import NeuralNetwork
import TensorCore

/// GroupNorm -> SiLU -> conv3x3, twice, plus a (1x1-conv when the channel count changes) shortcut. With a time
/// embedding, time_embedding_norm "default" adds it before norm2, "scale_shift" applies norm2(h) * (1 + scale) + shift.
/// `resample` .down / .up (diffusers down=True / up=True; CompVis openaimodel ResBlock down/up, resblock_updown):
/// after norm1 + SiLU, both the hidden state and the shortcut input are 2x2-average-pooled (Downsample2D without conv,
/// CompVis avg_pool_nd) or nearest-upsampled 2x (Upsample2D without conv, F.interpolate) before conv1.
public final class ResnetBlock2D: Module {
    public enum Resample: Sendable { case none, down, up }
    public let norm1: GroupNorm, conv1: Conv2d, timeEmbProj: Linear?, norm2: GroupNorm, conv2: Conv2d, convShortcut: Conv2d?
    public let scaleShift: Bool, outputScaleFactor: Float
    public let resample: Resample

    /// `tembChannels` nil: no time embedding (the VAE's blocks). `timeEmbeddingNorm`: resnet_time_scale_shift.
    public init(inChannels: Int, outChannels: Int, tembChannels: Int? = nil, groups: Int, eps: Float = 1e-6,
                timeEmbeddingNorm: TimeEmbeddingNorm = .default, outputScaleFactor: Float = 1, resample: Resample = .none) {
        let scaleShift = timeEmbeddingNorm == .scaleShift
        self.scaleShift = scaleShift
        self.outputScaleFactor = outputScaleFactor
        self.resample = resample
        norm1 = GroupNorm(groups: groups, channels: inChannels, eps: eps)
        conv1 = Conv2d(inChannels, outChannels, kernel: 3, padding: 1)
        timeEmbProj = tembChannels.map { Linear($0, scaleShift ? 2 * outChannels : outChannels) }
        norm2 = GroupNorm(groups: groups, channels: outChannels, eps: eps)
        conv2 = Conv2d(outChannels, outChannels, kernel: 3, padding: 1)
        convShortcut = inChannels != outChannels ? Conv2d(inChannels, outChannels, kernel: 1) : nil
    }

    /// `tembAct`: SiLU(time embedding), (B, temb_channels); nil for blocks without a time embedding.
    public func callAsFunction(_ input: Tensor, tembAct: Tensor? = nil) -> Tensor {
        if timeEmbProj == nil, resample == .none, outputScaleFactor == 1, !GradMode.isEnabled {
            // Inference without a time embedding (the VAE): the norms are applied band by band inside the convolutions
            // and the residual sum overwrites conv2's fresh output, so a block holds at most x and two activations at
            // once (the VAE decoder's peak memory at full resolution).
            let h = conv2.normalized(conv1.normalized(input, norm1, silu: true), norm2, silu: true)
            return h.accumulate(convShortcut?(input) ?? input)
        }
        var h = norm1(input, silu: true), x = input
        switch resample {
        case .none: break
        case .down:
            h = h.avgPool2d(kernel: 2)
            x = x.avgPool2d(kernel: 2)
        case .up:
            let (oh, ow) = (x.shape[2] * 2, x.shape[3] * 2)
            h = h.upsampleNearest(height: oh, width: ow)
            x = x.upsampleNearest(height: oh, width: ow)
        }
        h = conv1(h)
        if let proj = timeEmbProj, let tembAct {
            let t = proj(tembAct)
            let b = t.shape[0], c = t.shape[1]
            if scaleShift {
                let parts = t.reshaped([b, c, 1, 1]).chunk(2, axis: 1)
                h = (norm2(h) * (parts[0] + 1) + parts[1]).silu()
            } else {
                h = norm2(h, silu: true, adding: t)
            }
        } else {
            h = norm2(h, silu: true)
        }
        h = conv2(h)
        let out: Tensor
        if let shortcut = convShortcut {
            // Under bf16 autocast the sum is made in the 1x1 shortcut's GEMM (Conv2d's `adding:`, its product unrounded);
            // in float32 it is the sum as written, shortcut(x) + h.
            out = Autocast.isBF16 ? shortcut(x, adding: h) : shortcut(x) + h
        } else {
            // In inference the sum overwrites conv2's fresh output (no new tensor); the same float32 sums as x + h.
            out = GradMode.shouldRecord([h, x]) ? x + h : h.accumulate(x)
        }
        return outputScaleFactor == 1 ? out : out / outputScaleFactor
    }

    public var namedParameters: [(String, Tensor)] {
        scoped("norm1", norm1) + scoped("conv1", conv1) + scoped("time_emb_proj", timeEmbProj)
            + scoped("norm2", norm2) + scoped("conv2", conv2) + scoped("conv_shortcut", convShortcut)
    }
}
