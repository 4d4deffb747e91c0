// The first-stage training losses of CompVis latent-diffusion: LPIPSWithDiscriminator
// (ldm/modules/losses/contperceptual.py, for AutoencoderKL) and VQLPIPSWithDiscriminator
// (ldm/modules/losses/vqperceptual.py, for VQModel). The reconstruction / KL / codebook terms live here; the perceptual
// term (LPIPS) and the adversarial term (PatchGAN discriminator) plug in through the two protocols below.
import Autoencoders
import Foundation
import NeuralNetwork
import TensorCore

/// A perceptual distance per batch entry, shaped (B, 1, 1, 1) (lpips.LPIPS / taming LPIPS).
public protocol PerceptualLoss: AnyObject {
    func callAsFunction(_ x: Tensor, _ y: Tensor) throws -> Tensor
}

/// The adversarial part of the loss (discriminator, hinge / vanilla loss, adaptive weight, disc_start).
public protocol AdversarialLoss: AnyObject {
    /// The discriminator's trainable parameters (the second optimizer's).
    var parameters: [(String, Tensor)] { get }
    /// Everything a checkpoint must hold to continue exactly (parameters and buffers such as running statistics).
    var state: [(String, Tensor)] { get }
    /// The generator term added to the optimizer-0 loss at `globalStep` (zero before disc_start):
    /// d_weight * disc_factor * g_loss, with d_weight from the gradients of `nllLoss` and g_loss at `lastLayer`.
    func generatorTerm(reconstructions: Tensor, nllLoss: Tensor, lastLayer: Tensor, globalStep: Int) throws -> (Tensor, [String: Float])
    /// The optimizer-1 loss (disc_factor * disc_loss(logits_real, logits_fake)) on detached inputs; nil before disc_start.
    func discriminatorLoss(inputs: Tensor, reconstructions: Tensor, globalStep: Int) throws -> (Tensor, [String: Float])?
}

public final class FirstStageLoss {
    public enum Kind {
        /// LPIPSWithDiscriminator: nll = rec / exp(logvar) + logvar summed per entry, plus kl_weight * KL.
        /// (CompVis' AutoencoderKL never hands `logvar` to an optimizer, so it stays at logvar_init.)
        case kl(klWeight: Float, logvarInit: Float)
        /// VQLPIPSWithDiscriminator: mean(rec) + codebook_weight * codebook loss; pixel loss l1 or l2.
        case vq(codebookWeight: Float, pixelLoss: LossType)
    }
    public let kind: Kind
    public var perceptualWeight: Float
    public var perceptual: PerceptualLoss?
    public var adversarial: AdversarialLoss?

    public init(kind: Kind, perceptualWeight: Float = 1, perceptual: PerceptualLoss? = nil, adversarial: AdversarialLoss? = nil) {
        self.kind = kind
        self.perceptualWeight = perceptualWeight
        self.perceptual = perceptual
        self.adversarial = adversarial
    }

    /// Optimizer 0 (encoder, decoder, quant convs): the loss and its logged parts (names as the reference's log_dict).
    /// `posterior` for KL models, `codebookLoss` for VQ models; `lastLayer` is decoder.conv_out.weight.
    public func autoencoderLoss(inputs: Tensor, reconstructions: Tensor, posterior: DiagonalGaussianDistribution? = nil,
                                codebookLoss: Tensor? = nil, globalStep: Int, lastLayer: Tensor) throws -> (Tensor, [String: Float]) {
        guard inputs.shape == reconstructions.shape else {
            throw TrainingError("reconstructions \(reconstructions.shape) do not match inputs \(inputs.shape)")
        }
        let b = Float(inputs.shape[0])
        var log: [String: Float] = [:]
        let diff = inputs - reconstructions
        var pixel: Tensor
        if case .vq(_, .l2) = kind { pixel = diff.square() } else { pixel = diff.abs() }
        var recLoss = pixel
        if perceptualWeight > 0, let perceptual {
            let p = try perceptual(inputs, reconstructions)
            log["p_loss"] = p.mean().item
            recLoss = recLoss + p * perceptualWeight
        }
        var loss: Tensor, nllLoss: Tensor
        switch kind {
        case .kl(let klWeight, let logvar):
            guard let posterior else { throw TrainingError("the KL loss needs the posterior") }
            nllLoss = (recLoss * Float(exp(-Double(logvar))) + logvar).sum() / b
            let kl = posterior.kl().sum() / b
            loss = nllLoss + kl * klWeight
            log["kl_loss"] = kl.item
            log["logvar"] = logvar
        case .vq(let codebookWeight, _):
            guard let codebookLoss else { throw TrainingError("the VQ loss needs the codebook loss") }
            nllLoss = recLoss.mean()
            loss = nllLoss + codebookLoss.mean() * codebookWeight
            log["quant_loss"] = codebookLoss.mean().item
        }
        // The reference logs rec_loss after the perceptual term is added to it.
        log["rec_loss"] = recLoss.mean().item
        log["nll_loss"] = nllLoss.item
        if let adversarial {
            let (g, glog) = try adversarial.generatorTerm(reconstructions: reconstructions, nllLoss: nllLoss,
                                                          lastLayer: lastLayer, globalStep: globalStep)
            loss = loss + g
            log.merge(glog) { $1 }
        }
        log["total_loss"] = loss.item
        return (loss, log)
    }
}
