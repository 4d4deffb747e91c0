// The adversarial half of CompVis' first-stage losses:
//  - NLayerDiscriminator: taming.modules.discriminator.model.NLayerDiscriminator (the pix2pix PatchGAN) with
//    use_actnorm=False (BatchNorm2d; SyncBatchNorm under data parallelism), 4x4 convs with padding 1, LeakyReLU(0.2); state-dict names `main.N.*` as the
//    reference's nn.Sequential. `init(..., generator:)` replays torch's construction (Conv2d.reset_parameters'
//    kaiming-uniform weight and uniform bias draws) followed by `.apply(weights_init)` (normal(0, 0.02) conv weights,
//    normal(1, 0.02) BatchNorm weights, zero BatchNorm biases) on a torch-compatible generator, so a seeded
//    generator gives torch's values.
//  - PatchGANLoss: the GAN terms of LPIPSWithDiscriminator (ldm/modules/losses/contperceptual.py) and
//    VQLPIPSWithDiscriminator (ldm/modules/losses/vqperceptual.py): g_loss = -mean(logits_fake),
//    calculate_adaptive_weight (||d nll / d last_layer|| / (||d g_loss / d last_layer|| + 1e-4), clamped to [0, 1e4],
//    detached, times disc_weight), adopt_weight(disc_factor, global_step, disc_start), hinge_d_loss / vanilla_d_loss.
import Foundation
import NeuralNetwork
import TensorCore

public final class NLayerDiscriminator: Module {
    public enum Layer {
        case conv(Conv2d)
        case batchNorm(BatchNorm2d)
        case leakyReLU
    }
    /// The reference's `self.main` (nn.Sequential), index for index.
    public let main: [Layer]

    /// NLayerDiscriminator(input_nc, ndf, n_layers, use_actnorm=False). Weights are zero unless `generator` is given.
    public init(inputChannels: Int = 3, ndf: Int = 64, nLayers: Int = 3, generator: TorchGenerator? = nil) {
        precondition(inputChannels > 0 && ndf > 0 && nLayers >= 0, "NLayerDiscriminator: invalid sizes")
        var seq: [Layer] = [.conv(Conv2d(inputChannels, ndf, kernel: 4, stride: 2, padding: 1)), .leakyReLU]
        var mult = 1, prev = 1
        for n in stride(from: 1, to: nLayers, by: 1) {
            prev = mult
            mult = min(1 << n, 8)
            seq += [.conv(Conv2d(ndf * prev, ndf * mult, kernel: 4, stride: 2, padding: 1, bias: false)),
                    .batchNorm(BatchNorm2d(ndf * mult)), .leakyReLU]
        }
        prev = mult
        mult = min(1 << nLayers, 8)
        seq += [.conv(Conv2d(ndf * prev, ndf * mult, kernel: 4, stride: 1, padding: 1, bias: false)),
                .batchNorm(BatchNorm2d(ndf * mult)), .leakyReLU]
        seq.append(.conv(Conv2d(ndf * mult, 1, kernel: 4, stride: 1, padding: 1)))
        main = seq
        if let generator { initialize(generator) }
    }

    /// torch: each Conv2d's reset_parameters in construction order (weight.uniform_(+-1/sqrt(fan_in)), the same for
    /// the bias; BatchNorm draws nothing), then weights_init over the modules in order.
    private func initialize(_ g: TorchGenerator) {
        for case .conv(let conv) in main {
            let fanIn = conv.weight.count / conv.weight.shape[0]
            _ = g.uniform(count: conv.weight.count)   // the kaiming-uniform weight, overwritten by weights_init
            if let b = conv.bias {
                let bound = Float(1 / Double(fanIn).squareRoot()), from = -bound, span = bound - from
                b.assign(Tensor(g.uniform(count: b.count).map { $0 * span + from }, shape: b.shape))
            }
        }
        for layer in main {
            switch layer {
            case .conv(let conv): conv.weight.assign(Tensor(Self.normal(g, count: conv.weight.count, mean: 0, std: 0.02), shape: conv.weight.shape))
            case .batchNorm(let bn):
                bn.weight.assign(Tensor(Self.normal(g, count: bn.weight.count, mean: 1, std: 0.02), shape: bn.weight.shape))
                bn.bias.assign(Tensor(zeros: bn.bias.shape))
            case .leakyReLU: break
            }
        }
    }

    /// Tensor.normal_(mean, std) on a contiguous float32 tensor: normal_fill (16-wide Box-Muller, fused
    /// multiply-add in the AVX2 kernel) from 16 elements on, at::normal_distribution<double> below that.
    static func normal(_ g: TorchGenerator, count: Int, mean: Float, std: Float) -> [Float] {
        if count < 16 { return (0..<count).map { _ in Float(g.normalDouble() * Double(std) + Double(mean)) } }
        let z = g.normal(count: count)
        switch g.normalKernel {
        case .avx2: return z.map { mean.addingProduct($0, std) }
        case .scalar: return z.map { $0 * std + mean }
        }
    }

    public var training = true {
        didSet { for case .batchNorm(let bn) in main { bn.training = training } }
    }

    /// Data-parallel training: in training mode the BatchNorm layers normalise with the batch statistics of all
    /// ranks of this communicator (SyncBatchNorm.swift), so the discriminator sees the global batch whatever the
    /// number of ranks. Nil (one process): BatchNorm2d over this process's batch.
    public var synchronizedBatchNorm: Communicator?

    /// `frozen`: the parameters take part without gradients (detached views of the same values), so gradients reach
    /// only the input; BatchNorm still updates its running statistics in training mode.
    public func callAsFunction(_ x: Tensor, frozen: Bool = false) -> Tensor {
        var h = x
        for layer in main {
            switch layer {
            case .conv(let c):
                h = frozen ? Autocast.lowerPrecision(h, c.weight.detach(), c.bias?.detach()) { conv2d($0, $1, $2, c.options) }
                           : c(h)
            case .batchNorm(let bn):
                if let comm = synchronizedBatchNorm, bn.training {
                    h = syncBatchNorm(h, bn, frozen: frozen, communicator: comm)
                } else {
                    h = bn(h, frozen: frozen)
                }
            case .leakyReLU: h = h.leakyReLU(0.2)
            }
        }
        return h
    }

    /// Parameters and BatchNorm buffers, as the reference's state_dict.
    public var namedParameters: [(String, Tensor)] { named { $0.namedParameters } }
    /// What the discriminator's optimizer updates (no BatchNorm running statistics).
    public var trainableParameters: [(String, Tensor)] { named { $0.trainableParameters } }

    private func named(_ bnParams: (BatchNorm2d) -> [(String, Tensor)]) -> [(String, Tensor)] {
        main.enumerated().flatMap { i, layer -> [(String, Tensor)] in
            switch layer {
            case .conv(let c): return c.namedParameters.map { ("main.\(i).\($0.0)", $0.1) }
            case .batchNorm(let bn): return bnParams(bn).map { ("main.\(i).\($0.0)", $0.1) }
            case .leakyReLU: return []
            }
        }
    }
}

/// taming's adopt_weight: `value` (0) before `threshold`, `weight` from it on.
public func adoptWeight(_ weight: Float, globalStep: Int, threshold: Int, value: Float = 0) -> Float {
    globalStep < threshold ? value : weight
}

public final class PatchGANLoss: AdversarialLoss {
    public enum DiscLoss: String, Sendable { case hinge, vanilla }
    public let discriminator: NLayerDiscriminator
    public var discStart: Int, discFactor: Float, discWeight: Float, discLoss: DiscLoss
    /// Before disc_start the reference still runs the discriminator in the generator pass (updating BatchNorm's
    /// running statistics), computes d_weight for the log, and runs the discriminator step with a zero loss. These
    /// change neither the loss nor any gradient, so by default they are skipped: `generatorTerm` adds a zero and logs
    /// only disc_factor = 0, `discriminatorLoss` returns nil. Set true for the reference's logs and running statistics
    /// (then `discriminatorLoss` returns the zero-weighted loss instead of nil).
    public var runBeforeStart = false
    /// Data-parallel training: averages a last-layer gradient over the ranks before its norm is taken, so d_weight is
    /// the global batch's (under DDP the reference's torch.autograd.grad is not reduced and d_weight is per rank).
    /// Nil in one process.
    public var averageAcrossRanks: ((Tensor) throws -> Tensor)?

    public init(discriminator: NLayerDiscriminator, discStart: Int, discFactor: Float = 1, discWeight: Float = 1,
                discLoss: DiscLoss = .hinge) {
        self.discriminator = discriminator
        self.discStart = discStart
        self.discFactor = discFactor
        self.discWeight = discWeight
        self.discLoss = discLoss
    }

    /// From the lossconfig params: disc_start, disc_weight, disc_factor, disc_in_channels, disc_num_layers, disc_ndf
    /// (LPIPSWithDiscriminator has no disc_ndf: use 64 for KL models), disc_loss ("hinge" | "vanilla"). The
    /// discriminator is initialised as the reference's (`generator` plays torch's global generator).
    public convenience init(discStart: Int, discWeight: Float = 1, discFactor: Float = 1, discInChannels: Int = 3,
                            discNumLayers: Int = 3, discNdf: Int = 64, discLoss: String = "hinge",
                            generator: TorchGenerator) throws {
        guard let loss = DiscLoss(rawValue: discLoss) else {
            throw TrainingError("disc_loss must be \"hinge\" or \"vanilla\", not \"\(discLoss)\"")
        }
        guard discInChannels > 0, discNumLayers >= 0, discNdf > 0 else {
            throw TrainingError("invalid discriminator sizes: in_channels \(discInChannels), num_layers \(discNumLayers), ndf \(discNdf)")
        }
        self.init(discriminator: NLayerDiscriminator(inputChannels: discInChannels, ndf: discNdf, nLayers: discNumLayers,
                                                     generator: generator),
                  discStart: discStart, discFactor: discFactor, discWeight: discWeight, discLoss: loss)
    }

    public var parameters: [(String, Tensor)] { discriminator.trainableParameters.map { ("discriminator." + $0.0, $0.1) } }

    /// calculate_adaptive_weight: the ratio of the gradient norms of `nllLoss` and `gLoss` at `lastLayer`
    /// (torch.autograd.grad with retain_graph=True), clamped to [0, 1e4], times disc_weight.
    public func adaptiveWeight(nllLoss: Tensor, gLoss: Tensor, lastLayer: Tensor) throws -> Float {
        func norm(_ t: Tensor) -> Double { t.toArray().reduce(0.0) { $0 + Double($1) * Double($1) }.squareRoot() }
        var nllGrad = nllLoss.gradients(wrt: [lastLayer], retainGraph: true)[0]
        var gGrad = gLoss.gradients(wrt: [lastLayer], retainGraph: true)[0]
        if let averageAcrossRanks {
            nllGrad = try averageAcrossRanks(nllGrad)
            gGrad = try averageAcrossRanks(gGrad)
        }
        let ratio = Float(norm(nllGrad)) / (Float(norm(gGrad)) + 1e-4)
        return min(max(ratio, 0), 1e4) * discWeight
    }

    public func generatorTerm(reconstructions: Tensor, nllLoss: Tensor, lastLayer: Tensor, globalStep: Int) throws -> (Tensor, [String: Float]) {
        let factor = adoptWeight(discFactor, globalStep: globalStep, threshold: discStart)
        if factor == 0 && !runBeforeStart { return (Tensor(scalar: 0), ["disc_factor": 0]) }
        // Lightning's toggle_optimizer switches the discriminator's parameters off during the autoencoder's step: its
        // backward reaches the reconstructions only.
        let logitsFake = discriminator(reconstructions, frozen: true)
        let gLoss = -logitsFake.mean()
        // LPIPSWithDiscriminator computes d_weight only when disc_factor > 0 (the VQ loss always, to the same effect).
        var dWeight: Float = 0
        if discFactor > 0 {
            guard nllLoss.requiresGrad, gLoss.requiresGrad else {
                throw TrainingError("the adaptive GAN weight needs the losses' graphs (got a loss computed without gradients)")
            }
            dWeight = try adaptiveWeight(nllLoss: nllLoss, gLoss: gLoss, lastLayer: lastLayer)
        }
        let term = gLoss * (dWeight * factor)
        return (term, ["d_weight": dWeight, "disc_factor": factor, "g_loss": gLoss.item])
    }

    public func discriminatorLoss(inputs: Tensor, reconstructions: Tensor, globalStep: Int) throws -> (Tensor, [String: Float])? {
        let factor = adoptWeight(discFactor, globalStep: globalStep, threshold: discStart)
        if factor == 0 && !runBeforeStart { return nil }
        let logitsReal = discriminator(inputs.detach())
        let logitsFake = discriminator(reconstructions.detach())
        let d: Tensor
        switch discLoss {
        case .hinge: d = ((1 - logitsReal).relu().mean() + (1 + logitsFake).relu().mean()) * 0.5
        case .vanilla: d = ((-logitsReal).softplus().mean() + logitsFake.softplus().mean()) * 0.5
        }
        let loss = d * factor
        return (loss, ["disc_loss": loss.item, "logits_real": logitsReal.mean().item, "logits_fake": logitsFake.mean().item])
    }
}
