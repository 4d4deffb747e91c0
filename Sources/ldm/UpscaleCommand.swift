// `ldm upscale`: diffusers LDMSuperResolutionPipeline (CompVis/ldm-super-resolution-4x-openimages) from the command line,
// or the CompVis form of the same model: `--config bsr_sr/config.yaml --model model.ckpt` (Identity cond stage, concat).
import ArgumentParser
import Foundation
import Imaging
import Pipelines

struct Upscale: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "upscale", abstract: "4x super-resolution with a latent diffusion upscaler.")

    @OptionGroup var options: GenerationOptions

    @Option(name: .customLong("init-image"), help: "The low-resolution image (cut down to a multiple of 32 pixels).")
    var initImage: String

    func run() throws { try options.compute(generate) }

    private func generate() throws {
        guard options.batchSize == 1 else { throw CLIError("upscale takes one image: --batch-size must be 1") }
        let (sampling, paths) = try options.check(defaultSteps: 100)
        try FileChecks.readableFile(initImage, what: "init image")
        let image = try ImageIO.loadRGB(path: initImage)
        guard image.width >= 32, image.height >= 32 else {
            throw CLIError("init image \(image.width)x\(image.height) is smaller than 32x32")
        }
        let s = try options.summary()
        try requireModel(s, options.model, for: .upscale)
        let seed = options.resolvedSeed
        options.log("loading \(options.model)")
        let pipe = LatentDiffusionPipeline(bundle: try options.loadBundle())
        let bar = options.progressBar("upscale")
        let result = try pipe.upscale(image, sampling, generator: options.generator(seed: seed), progress: bar.update)
        options.log("seed \(seed)")
        try options.write(result, to: paths, parameters: options.parameters(seed: seed, steps: sampling.steps, scheduler: pipe.bundle.schedulerConfig.className))
    }
}
