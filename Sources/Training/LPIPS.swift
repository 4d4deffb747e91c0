// LPIPS, the learned perceptual metric of CompVis' first-stage losses: taming-transformers'
// taming.modules.losses.lpips.LPIPS, which is the `lpips` package's LPIPS(net='vgg', version='0.1', lpips=True):
// ScalingLayer ((x - shift) / scale), the torchvision VGG16 `features` cut into five slices (relu1_2, relu2_2, relu3_3,
// relu4_3, relu5_3), normalize_tensor (eps 1e-10) on each, squared differences, NetLinLayer (1x1 conv without bias,
// after a Dropout(0.5) that only acts in training mode), spatial_average(keepdim) and the sum over the five layers:
// one value per batch entry, shaped (B, 1, 1, 1).
//
// Weights (all frozen: requires_grad False; gradients still flow to the inputs) come from user files:
//  - torchvision's vgg16 checkpoint (`features.N.weight/bias`; its `classifier.*` keys are ignored) plus the linear
//    layers of the lpips package's weights/v0.1/vgg.pth or taming's vgg.pth (`lin0.model.1.weight` ... `lin4...`;
//    legacy non-zip torch files, read as they are),
//  - or one file in the layout of taming's LPIPS state_dict (`net.slice1.0.weight` ..., `lin0.model.1.weight` ...,
//    optionally `scaling_layer.shift/scale`, which must hold the constants; the lpips package's `lins.K.*` aliases of
//    `linK.*` are accepted too).
// Any other key, a missing key or a wrong shape is an error naming it.
import Checkpoints
import Foundation
import NeuralNetwork
import TensorCore

public final class LPIPS: Module, PerceptualLoss {
    /// Channels of the five VGG16 feature outputs.
    public static let channels = [64, 128, 256, 512, 512]
    /// torchvision vgg16 `features` up to relu5_3: (index in `features`, in, out) of each 3x3 conv (each is followed
    /// by a ReLU at index + 1); max pools sit at 4, 9, 16, 23.
    public static let vggConvs: [(index: Int, inChannels: Int, outChannels: Int)] = [
        (0, 3, 64), (2, 64, 64), (5, 64, 128), (7, 128, 128), (10, 128, 256), (12, 256, 256), (14, 256, 256),
        (17, 256, 512), (19, 512, 512), (21, 512, 512), (24, 512, 512), (26, 512, 512), (28, 512, 512),
    ]
    /// First `features` index of each slice (slice1 = 0..<4, slice2 = 4..<9, ..., slice5 = 23..<30).
    static let sliceStarts = [0, 4, 9, 16, 23, 30]
    static func slice(ofFeature index: Int) -> Int? {
        guard index >= 0, index < 30 else { return nil }
        return (1...5).first { index < sliceStarts[$0] }
    }

    public static let shift: [Float] = [-0.030, -0.088, -0.188]
    public static let scale: [Float] = [0.458, 0.448, 0.450]

    /// VGG convolutions keyed by their index in torchvision's `features`.
    public let convs: [Int: Conv2d]
    /// lin0 ... lin4 (NetLinLayer: 1x1 conv, C -> 1, no bias).
    public let lins: [Conv2d]
    /// The reference's Dropout(0.5) before each lin layer acts when the module is in training mode, which is the case
    /// in CompVis training (Lightning's model.train() reaches the loss's `LPIPS().eval()` too). Set a generator to
    /// reproduce that (the masks are not torch's bernoulli draws); nil is eval mode (deterministic).
    public var dropoutGenerator: RandomSource?

    /// An LPIPS with zero weights; load them with `load(vgg:linear:)`, `load(combined:)` or `Module.load`.
    public init() {
        var convs: [Int: Conv2d] = [:]
        for c in Self.vggConvs { convs[c.index] = Conv2d(c.inChannels, c.outChannels, kernel: 3, padding: 1) }
        self.convs = convs
        lins = Self.channels.map { Conv2d($0, 1, kernel: 1, bias: false) }
        for (_, p) in namedParameters { p.requiresGrad = false }
    }

    /// taming's LPIPS state_dict names: net.sliceK.N.weight/bias, linK.model.1.weight.
    public var namedParameters: [(String, Tensor)] {
        var out: [(String, Tensor)] = []
        for c in Self.vggConvs {
            let conv = convs[c.index]!, prefix = "net.slice\(Self.slice(ofFeature: c.index)!).\(c.index)"
            out += [("\(prefix).weight", conv.weight), ("\(prefix).bias", conv.bias!)]
        }
        for (k, lin) in lins.enumerated() { out.append(("lin\(k).model.1.weight", lin.weight)) }
        return out
    }

    // MARK: loading

    /// From torchvision's vgg16 weights and the lpips/taming linear layers (safetensors or torch files, zip or legacy:
    /// the lpips package's vgg.pth as shipped).
    public convenience init(vgg: URL, linear: URL) throws {
        self.init()
        try load(vgg: try CheckpointFile.open(vgg).tensors, linear: try CheckpointFile.open(linear).tensors)
    }

    /// From one file in taming's LPIPS state_dict layout.
    public convenience init(combined: URL) throws {
        self.init()
        try load(combined: try CheckpointFile.open(combined).tensors)
    }

    public func load(vgg: [String: TensorRecord], linear: [String: TensorRecord]) throws {
        var records: [String: TensorRecord] = [:], unexpected: [String] = []
        for (key, r) in vgg {
            if key.hasPrefix("classifier.") { continue }   // the ImageNet head of torchvision's vgg16
            let parts = key.split(separator: ".")
            guard parts.count == 3, parts[0] == "features", let i = Int(parts[1]), let s = Self.slice(ofFeature: i),
                  parts[2] == "weight" || parts[2] == "bias" else {
                      unexpected.append("vgg: \(key)")
                      continue
                  }
            records["net.slice\(s).\(i).\(parts[2])"] = r
        }
        for (key, r) in linear {
            guard key.range(of: #"^lin[0-4]\.model\.1\.weight$"#, options: .regularExpression) != nil else {
                unexpected.append("linear: \(key)")
                continue
            }
            records[key] = r
        }
        try loadStrictly(records, unexpected: unexpected)
    }

    public func load(combined: [String: TensorRecord]) throws {
        var records: [String: TensorRecord] = [:], unexpected: [String] = []
        for (key, r) in combined {
            if key == "scaling_layer.shift" || key == "scaling_layer.scale" {
                let want = key.hasSuffix("shift") ? Self.shift : Self.scale
                guard r.elementCount == 3, let v = try? r.floats(), zip(v, want).allSatisfy({ abs($0 - $1) <= 1e-6 }) else {
                    throw TrainingError("cannot load LPIPS: \(key) is not the ScalingLayer constant \(want)")
                }
                continue
            }
            if let m = key.range(of: #"^lins\.[0-4]\."#, options: .regularExpression) {
                // The lpips package's state_dict holds each lin layer twice: linK.* and lins.K.*.
                let name = "lin\(key[key.index(key.startIndex, offsetBy: 5)])." + key[m.upperBound...]
                if combined[name] == nil { records[name] = r }
                continue
            }
            records[key] = r
        }
        let known = Set(namedParameters.map(\.0))
        for key in records.keys where !known.contains(key) {
            unexpected.append(key)
            records[key] = nil
        }
        try loadStrictly(records, unexpected: unexpected)
    }

    private func loadStrictly(_ records: [String: TensorRecord], unexpected: [String]) throws {
        var report: LoadReport
        do { report = try load(records, component: "LPIPS") } catch let e as LoadError { report = e.report }
        report.unexpected = (report.unexpected + unexpected).sorted()
        guard report.isComplete, report.unexpected.isEmpty else {
            throw TrainingError("cannot load LPIPS: weights do not match the model\n\(report)")
        }
        for (_, p) in namedParameters { p.requiresGrad = false }
    }

    // MARK: forward

    /// relu1_2 ... relu5_3 of the VGG16 features.
    public func features(_ x: Tensor) -> [Tensor] {
        var h = x, outs: [Tensor] = []
        for i in 0..<30 {
            if let conv = convs[i] { h = conv(h).relu() }
            else if [4, 9, 16, 23].contains(i) { h = h.maxPool2d(kernel: 2, stride: 2) }
            if Self.sliceStarts.dropFirst().contains(i + 1) { outs.append(h) }
        }
        return outs
    }

    /// The LPIPS distance between `x` and `y` (N, 3, H, W) in [-1, 1]: (N, 1, 1, 1).
    public func callAsFunction(_ x: Tensor, _ y: Tensor) throws -> Tensor {
        guard x.shape == y.shape, x.rank == 4, x.shape[1] == 3 else {
            throw TrainingError("LPIPS: inputs \(x.shape) and \(y.shape) must both be (N, 3, H, W)")
        }
        let n = x.shape[0]
        let shift = Tensor(Self.shift, shape: [1, 3, 1, 1]), scale = Tensor(Self.scale, shape: [1, 3, 1, 1])
        // Both images go through VGG as one batch (convolutions are per entry, so this is the reference's two calls).
        let feats = features((concat([x, y], axis: 0) - shift) / scale)
        var val: Tensor?
        for (k, f) in feats.enumerated() {
            let normed = f / (f.square().sum(axes: [1], keepDims: true).sqrt() + 1e-10)
            var diff = (normed.narrow(0, 0, n) - normed.narrow(0, n, n)).square()
            if let g = dropoutGenerator { diff = diff.dropout(0.5, generator: g) }
            let res = lins[k](diff).mean(axes: [2, 3], keepDims: true)
            val = val.map { $0 + res } ?? res
        }
        return val!
    }
}
