// Builds the perceptual (LPIPS) and adversarial (PatchGAN) terms of an AutoencoderTrainConfig.
import Foundation
import TensorCore

extension AutoencoderTrainConfig {
    /// lpips_vgg alone: one combined file (taming's LPIPS state_dict); with lpips_lin: torchvision vgg16 + lin layers.
    func makePerceptual(vgg: String, lin: String?) throws -> PerceptualLoss {
        if let lin { return try LPIPS(vgg: URL(fileURLWithPath: vgg), linear: URL(fileURLWithPath: lin)) }
        return try LPIPS(combined: URL(fileURLWithPath: vgg))
    }

    /// The discriminator is initialised as the reference's (weights_init) from a generator seeded with the run's seed.
    func makeAdversarial() throws -> AdversarialLoss {
        try PatchGANLoss(discStart: discStart, discWeight: discWeight, discFactor: discFactor, discInChannels: discInChannels,
                         discNumLayers: discNumLayers, discNdf: discNDF, discLoss: discLoss, generator: TorchGenerator(seed: seed &+ 1))
    }
}

extension PatchGANLoss {
    /// Trainable weights and the BatchNorm running statistics, for checkpoints.
    public var state: [(String, Tensor)] { discriminator.namedParameters.map { ("discriminator." + $0.0, $0.1) } }
}
