// `ldm img2img`: diffusers StableDiffusionImg2ImgPipeline from the command line.
import ArgumentParser
import Foundation
import Imaging
import Pipelines

struct Img2Img: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "img2img", abstract: "Transform an image guided by a text prompt.")

    @OptionGroup var options: GenerationOptions
    @OptionGroup var prompt: PromptArguments
    @OptionGroup var sdxl: SDXLArguments

    @Option(name: .customLong("init-image"), help: "The starting image (PNG or JPEG).")
    var initImage: String

    @Option(help: "How much to change the image, in [0, 1] (1: ignore it).")
    var strength: Double = 0.8

    func run() throws { try options.compute(generate) }

    private func generate() throws {
        var (sampling, paths) = try options.check()
        let summary = try options.summary()
        let (loras, lcmCFG) = try options.lorasWithLCMDefaults(&sampling, summary: summary, prompt: prompt)
        var p = try prompt.check(defaultGuidance: lcmCFG ?? 7.5)
        try sdxl.apply(to: &p, isSDXL: summary.kind.isSDXL, model: options.model)
        try Validation.checkStrength(strength)
        // On an LCM folder the strength may cut the consistency grid instead (LatentConsistencyModelImg2ImgPipeline),
        // which has its own limit: the pipeline checks it before any step.
        let lcmFolder = ["LatentConsistencyModelPipeline", "LatentConsistencyModelImg2ImgPipeline"].contains(summary.pipelineClass ?? "")
        if !lcmFolder { try Validation.checkImg2ImgSteps(steps: sampling.steps, strength: strength) }
        try FileChecks.readableFile(initImage, what: "init image")
        let image = try ImageIO.loadRGB(path: initImage)
        try requireModel(summary, options.model, for: .img2img)
        let seed = options.resolvedSeed
        options.log("loading \(options.model)")
        let bundle = try options.loadBundle(loras: loras)
        p.clipSkip = try prompt.clipSkip(for: bundle)
        let pipe = try StableDiffusionPipeline(bundle: bundle)
        let bar = options.progressBar("img2img")
        let result = try pipe.imageToImage(p, sampling, image: image, strength: strength,
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
