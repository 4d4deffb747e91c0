// `ldm inpaint`: diffusers StableDiffusionInpaintPipeline from the command line (9-channel inpainting models, or
// 4-channel models with latent mask blending).
import ArgumentParser
import Foundation
import Imaging
import Pipelines

struct Inpaint: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "inpaint", abstract: "Repaint the white area of a mask guided by a text prompt.")

    @OptionGroup var options: GenerationOptions
    @OptionGroup var prompt: PromptArguments
    @OptionGroup var sdxl: SDXLArguments

    @Option(name: .customLong("init-image"), help: "The image to repaint (PNG or JPEG).")
    var initImage: String

    @Option(help: "The mask, same size as the image: white = repaint, black = keep.")
    var mask: String

    @Option(help: "How much to change the masked area, in [0, 1].")
    var strength: Double = 1

    func run() throws { try options.compute(generate) }

    private func generate() throws {
        var (sampling, paths) = try options.check()
        let summary = try options.summary()
        let (loras, lcmCFG) = try options.lorasWithLCMDefaults(&sampling, summary: summary, prompt: prompt)
        var p = try prompt.check(defaultGuidance: lcmCFG ?? 7.5)
        try sdxl.apply(to: &p, isSDXL: summary.kind.isSDXL, model: options.model)
        try Validation.checkStrength(strength)
        try Validation.checkImg2ImgSteps(steps: sampling.steps, strength: strength)
        try FileChecks.readableFile(initImage, what: "init image")
        try FileChecks.readableFile(mask, what: "mask")
        let image = try ImageIO.loadRGB(path: initImage)
        let maskImage = try ImageIO.loadMask(path: mask)
        try Validation.checkMaskSize(image: (image.width, image.height), mask: (maskImage.width, maskImage.height))
        try requireModel(summary, options.model, for: .inpaint)
        guard summary.unetInChannels == 4 || summary.unetInChannels == 9 else {
            throw CLIError("model \(options.model): UNet with \(summary.unetInChannels) input channels cannot inpaint (4 or 9)")
        }
        let seed = options.resolvedSeed
        options.log("loading \(options.model)")
        let bundle = try options.loadBundle(loras: loras)
        p.clipSkip = try prompt.clipSkip(for: bundle)
        let pipe = try StableDiffusionPipeline(bundle: bundle)
        let bar = options.progressBar("inpaint")
        let result = try pipe.inpaint(p, sampling, image: image, mask: maskImage, strength: strength,
                                      generator: options.generator(seed: seed), progress: bar.update)
        var params = options.parameters(seed: seed, steps: sampling.steps, scheduler: sampling.sampler ?? pipe.bundle.schedulerConfig.className)
        prompt.annotate(&params, options: p)
        sdxl.annotate(&params)
        options.recordLoRAs(&params, pipe.bundle)
        params.extra.append(.init("Denoising strength", "\(strength)"))
        options.log("seed \(seed)")
        try options.write(result, to: paths, parameters: params)
    }
}
