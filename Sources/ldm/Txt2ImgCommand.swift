// `ldm txt2img`: diffusers StableDiffusionPipeline from the command line (Pipelines.StableDiffusionPipeline.textToImage).
import ArgumentParser
import Foundation
import Pipelines

struct Txt2Img: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "txt2img", abstract: "Generate images from a text prompt (Stable Diffusion 1.x/2.x).")

    @OptionGroup var options: GenerationOptions
    @OptionGroup var prompt: PromptArguments

    func run() throws {
        let (sampling, paths) = try options.check()
        let p = try prompt.check()
        try requireTextModel(try options.summary(), options.model)
        let seed = options.resolvedSeed
        options.log("loading \(options.model)")
        let pipe = try StableDiffusionPipeline(bundle: prompt.configure(options.loadBundle()))
        let bar = options.progressBar("txt2img")
        let result = try pipe.textToImage(p, sampling, generator: options.generator(seed: seed), progress: bar.update)
        var params = options.parameters(seed: seed, steps: sampling.steps, scheduler: pipe.bundle.schedulerConfig.className)
        prompt.annotate(&params, bundle: pipe.bundle)
        options.log("seed \(seed)")
        try options.write(result, to: paths, parameters: params)
    }
}
