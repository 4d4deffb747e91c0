// Checkpoints of the first-stage trainer (the format of TrainingCheckpoint.swift with two optimizers:
// "model.*", "disc.discriminator.*", "optimizer.*", "disc_optimizer.*", generator_state, metadata) and the wiring of an
// AutoencoderTrainer from its JSON configuration.
import Autoencoders
import Checkpoints
import Foundation
import NeuralNetwork
import TensorCore

extension AutoencoderTrainer {
    static let checkpointFormat = "ldm-train-autoencoder-checkpoint-1"

    @discardableResult
    public func saveCheckpoint() throws -> URL {
        var entries = model.module.namedParameters.map { Trainer.entry("model.\($0.0)", $0.1) }
        if let adversarial = loss.adversarial { entries += adversarial.state.map { Trainer.entry("disc.\($0.0)", $0.1) } }
        entries += optimizer.stateTensors.map { Trainer.entry("optimizer.\($0.0)", $0.1) }
        if let discOptimizer { entries += discOptimizer.stateTensors.map { Trainer.entry("disc_optimizer.\($0.0)", $0.1) } }
        let common = ResumableCheckpoint.common(format: Self.checkpointFormat, position: TrainingPosition(step: step, epoch: epoch, batchInEpoch: batchInEpoch),
                                                seed: seed, batchSize: sampler.batchSize, precision: precision, generator: generator)
        entries.append(common.entry)
        var meta = common.meta
        meta["optimizer_step"] = String(optimizer.stepCount)
        if let discOptimizer { meta["disc_optimizer_step"] = String(discOptimizer.stepCount) }
        let url = checkpointsDir.appendingPathComponent(String(format: "step-%08d.safetensors", step))
        try SafeTensors.write(entries, metadata: meta, to: url)
        return url
    }

    /// Restores the latest checkpoint of the run directory and trims the loss log to its step.
    public func resume() throws {
        let ckpt = try ResumableCheckpoint(latestIn: runDir, format: Self.checkpointFormat, kind: "an autoencoder training checkpoint",
                                           batchSize: sampler.batchSize, seed: seed, precision: precision)
        let url = ckpt.url
        try model.module.load(ckpt.group("model."), component: "\(url.lastPathComponent) model")
        try ckpt.restore(optimizer, prefix: "optimizer.", stepKey: "optimizer_step")
        if let adversarial = loss.adversarial, let discOptimizer {
            let saved = ckpt.group("disc.")
            guard !saved.isEmpty else { throw TrainingError("\(url.path) has no discriminator weights but this run has a discriminator") }
            try StateDictLoader(adversarial.state).load(saved, component: "\(url.lastPathComponent) discriminator")
            try ckpt.restore(discOptimizer, prefix: "disc_optimizer.", stepKey: "disc_optimizer_step")
        }
        let position = try ckpt.restore(generator, batchesPerEpoch: sampler.batchesPerEpoch)
        step = position.step
        epoch = position.epoch
        batchInEpoch = position.batchInEpoch
        try ResumableCheckpoint.tidy(runDir: runDir, log: logURL, step: step, communicator: communicator)
    }
}

/// Drops log lines whose "step" is after `step` (written after the checkpoint by an interrupted run).
func trimJSONLines(_ url: URL, keepingStepsUpTo step: Int) throws {
    guard let data = FileManager.default.contents(atPath: url.path) else { return }
    struct Step: Decodable { var step: Int }
    let decoder = JSONDecoder()
    var out = Data()
    for line in data.split(separator: 0x0A) {
        guard let s = try? decoder.decode(Step.self, from: Data(line)), s.step <= step else { continue }
        out.append(contentsOf: line)
        out.append(0x0A)
    }
    try out.write(to: url, options: .atomic)
}

/// Loads a flat parameter list (not a Module) strictly from records.
final class StateDictLoader: Module {
    let namedParameters: [(String, Tensor)]
    init(_ p: [(String, Tensor)]) { namedParameters = p }
}

extension AutoencoderTrainConfig {
    /// The loss of the config: reconstruction + KL (or codebook), LPIPS when weights are given, and the PatchGAN
    /// discriminator when `makeAdversarial` builds one (see Discriminator.swift).
    public func makeLoss(log: (String) -> Void = { _ in }) throws -> FirstStageLoss {
        let kindLoss: FirstStageLoss.Kind = kind == .kl ? .kl(klWeight: klWeight, logvarInit: logvarInit)
                                                        : .vq(codebookWeight: codebookWeight, pixelLoss: pixelLoss)
        let loss = FirstStageLoss(kind: kindLoss, perceptualWeight: perceptualWeight)
        if perceptualWeight > 0 {
            if let vgg = lpipsVGG {
                loss.perceptual = try makePerceptual(vgg: vgg, lin: lpipsLin)
            } else {
                loss.perceptualWeight = 0
                log("no LPIPS weights given (lpips_vgg / lpips_lin): training without the perceptual term")
            }
        }
        if useDiscriminator && discStart < maxSteps {
            loss.adversarial = try makeAdversarial()
        } else {
            log("no discriminator (use_discriminator false or disc_start \(discStart) >= max_steps \(maxSteps))")
        }
        return loss
    }

    public func makeTrainer(runDir: URL, communicator: Communicator = SingleProcess(), log: (String) -> Void = { _ in }) throws -> AutoencoderTrainer {
        let model = try makeModel()
        let down: Int, channels: Int
        switch model {
        case .kl(let m):
            down = m.downsamplingFactor
            channels = m.config.inChannels
        case .vq(let m):
            down = m.downsamplingFactor
            channels = m.config.inChannels
        }
        guard channels == 3 else { throw TrainingError("the autoencoder takes \(channels) input channels; image folders give 3 (RGB)") }
        guard imageSize % down == 0 else { throw TrainingError("image_size \(imageSize) must be a multiple of the downsampling factor \(down)") }
        let dataset = try ImageFolderDataset(root: URL(fileURLWithPath: dataDir), size: imageSize, randomCrop: randomCrop, randomFlip: randomFlip)
        let trainer = try AutoencoderTrainer(model: model, loss: try makeLoss(log: log), dataset: dataset, batchSize: batchSize,
                                             learningRate: learningRate, maxSteps: maxSteps, checkpointEvery: ckptEvery, seed: seed,
                                             betas: (adamBeta1, adamBeta2), eps: adamEpsilon, weightDecay: weightDecay,
                                             prefetch: prefetch, runDir: runDir, communicator: communicator)
        trainer.lrSchedule = try LRSchedule(name: lrScheduler, warmup: lrWarmupSteps, total: maxSteps)
        trainer.maxGradNorm = maxGradNorm
        trainer.sampleEvery = sampleEvery
        trainer.exportDType = exportDType
        trainer.precision = precision
        return trainer
    }
}
