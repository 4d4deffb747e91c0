// `ldm txt2img`: diffusers StableDiffusionPipeline (Pipelines.StableDiffusionPipeline.textToImage), or for an LDM-BERT
// folder diffusers LDMTextToImagePipeline (Pipelines.LDMTextToImagePipeline.textToImage), from the command line.
import ArgumentParser
import Foundation
import Pipelines

struct Txt2Img: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "txt2img", abstract: "Generate images from a text prompt (Stable Diffusion 1.x/2.x, SDXL with an optional refiner, LDM-BERT text-to-image).")

    @OptionGroup var options: GenerationOptions
    @OptionGroup var prompt: PromptArguments
    @OptionGroup var sdxl: SDXLArguments

    @Option(help: "SDXL: a refiner model (a diffusers folder such as stable-diffusion-xl-refiner-1.0, or another SDXL model) that denoises the end of the schedule after --model (diffusers' denoising_end / denoising_start handoff).")
    var refiner: String?

    @Option(name: .customLong("refiner-switch"), help: "With --refiner: the fraction of the schedule --model runs before the refiner takes over, in (0, 1) (the web UI's \"Refiner switch at\", default 0.8).")
    var refinerSwitch: Double?

    @Flag(help: "Print where the time and memory went: load, text encoding, seconds per step, decode, peak RSS (on stderr, also with --quiet).")
    var timings = false

    func run() throws { try options.compute(generate) }

    /// --refiner and --refiner-switch before any model is loaded: an SDXL base and an SDXL refiner (or base) model.
    private func checkRefiner(base: ModelSummary) throws -> ModelSummary? {
        guard let refiner else {
            if refinerSwitch != nil { throw CLIError("--refiner-switch needs --refiner") }
            return nil
        }
        if let s = refinerSwitch, !(s > 0 && s < 1) { throw CLIError("--refiner-switch must be in (0, 1), got \(s)") }
        guard base.kind == .text(.sdxl) else { throw CLIError("--refiner needs an SDXL base --model; \(options.model) is \(base.kind.name)") }
        guard options.config == nil else { throw CLIError("--refiner takes diffusers SDXL models; --config is for CompVis checkpoints") }
        try FileChecks.modelPath(refiner)
        let summary = try worded { try ModelSummary.read(URL(fileURLWithPath: refiner)) }
        guard summary.kind == .text(.sdxlRefiner) || summary.kind == .text(.sdxl) else {
            throw CLIError("--refiner \(refiner) is \(summary.kind.name), not an SDXL refiner")
        }
        return summary
    }

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
        try sdxl.apply(to: &p, isSDXL: summary.kind.isSDXL, model: options.model)
        let refinerSummary = try checkRefiner(base: summary)
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
            if let refiner, refinerSummary != nil {
                options.log("loading refiner \(refiner)")
                let refinerPipe = try StableDiffusionPipeline(bundle: ModelBundle.load(URL(fileURLWithPath: refiner)))
                clock?.markLoaded()
                result = try pipe.textToImage(p, sampling, refiner: refinerPipe, switchAt: refinerSwitch ?? 0.8,
                                              generator: options.generator(seed: seed), progress: progress)
            } else {
                result = try pipe.textToImage(p, sampling, generator: options.generator(seed: seed), progress: progress)
            }
        }
        var params = options.parameters(seed: seed, steps: sampling.steps, scheduler: sampling.sampler ?? bundle.schedulerConfig.className)
        prompt.annotate(&params, options: p)
        sdxl.annotate(&params)
        if let refiner {
            // AUTOMATIC1111's infotext fields of its refiner
            params.extra += [.init("Refiner", URL(fileURLWithPath: refiner).deletingPathExtension().lastPathComponent),
                             .init("Refiner switch at", "\(refinerSwitch ?? 0.8)")]
        }
        options.recordLoRAs(&params, bundle)
        options.log("seed \(seed)")
        let decoded = Date()
        try options.write(result, to: paths, parameters: params)
        if let clock { FileHandle.standardError.write(Data((clock.report(decodedAt: decoded, writtenAt: Date()) + "\n").utf8)) }
    }
}
