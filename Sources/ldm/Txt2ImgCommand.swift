// `ldm txt2img`: diffusers StableDiffusionPipeline (Pipelines.StableDiffusionPipeline.textToImage), or for an LDM-BERT
// folder diffusers LDMTextToImagePipeline (Pipelines.LDMTextToImagePipeline.textToImage), from the command line.
import ArgumentParser
import Foundation
import Pipelines

struct Txt2Img: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "txt2img", abstract: "Generate images from a text prompt (Stable Diffusion 1.x/2.x, LDM-BERT text-to-image).")

    @OptionGroup var options: GenerationOptions
    @OptionGroup var prompt: PromptArguments

    @Flag(help: "Print where the time and memory went: load, text encoding, seconds per step, decode, peak RSS (on stderr, also with --quiet).")
    var timings = false

    func run() throws { try options.compute(generate) }

    private func generate() throws {
        var (sampling, paths) = try options.check()
        let summary = try options.summary()
        try requireModel(summary, options.model, for: .txt2img)
        if summary.hasLDMBert {
            guard prompt.clipSkip == nil else { throw CLIError("--clip-skip is for CLIP text encoders; \(options.model) has LDM-BERT") }
            guard prompt.emphasis == PromptEmphasis.diffusers.rawValue else {
                throw CLIError("--emphasis is for CLIP text encoders; \(options.model) has LDM-BERT")
            }
        }
        let (loras, lcmCFG) = try options.lorasWithLCMDefaults(&sampling, summary: summary, prompt: prompt)
        var p = try prompt.check(defaultGuidance: summary.hasLDMBert ? LDMTextToImagePipeline.defaultGuidanceScale : lcmCFG ?? 7.5)
        let seed = options.resolvedSeed
        let clock = timings ? Timings() : nil
        options.log("loading \(options.model)")
        let bundle = try options.loadBundle(loras: loras)
        clock?.markLoaded()
        let bar = options.progressBar("txt2img")
        let progress: (Int, Int) -> Bool = { step, total in
            clock?.stepDone()
            return bar.update(step, total)
        }
        let result: GenerationResult
        if summary.hasLDMBert {
            result = try LDMTextToImagePipeline(bundle: bundle).textToImage(p, sampling, generator: options.generator(seed: seed),
                                                                            progress: progress)
        } else {
            p.clipSkip = try prompt.clipSkip(for: bundle)
            let pipe = try StableDiffusionPipeline(bundle: bundle)
            result = try pipe.textToImage(p, sampling, generator: options.generator(seed: seed), progress: progress)
        }
        var params = options.parameters(seed: seed, steps: sampling.steps, scheduler: sampling.sampler ?? bundle.schedulerConfig.className)
        prompt.annotate(&params, options: p)
        options.recordLoRAs(&params, bundle)
        options.log("seed \(seed)")
        let decoded = Date()
        try options.write(result, to: paths, parameters: params)
        if let clock { FileHandle.standardError.write(Data((clock.report(decodedAt: decoded, writtenAt: Date()) + "\n").utf8)) }
    }
}
