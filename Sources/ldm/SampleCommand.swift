// `ldm sample`: unconditional (diffusers LDMPipeline) or class-conditional sampling of a latent diffusion model.
import ArgumentParser
import Foundation
import Pipelines

struct Sample: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "sample", abstract: "Sample an unconditional or class-conditional latent diffusion model.")

    @OptionGroup var options: GenerationOptions

    @Option(name: .customLong("class"), help: "Class label for class-conditional models.")
    var classLabel: Int?

    @Option(name: .customLong("cfg-scale"), help: "Guidance scale against the null class (class-conditional models; default 3, the scale of CompVis' class-conditional sampling notebook; 1 turns guidance off).")
    var cfgScale: Double?

    @Option(help: "Image width in pixels (default: the model's sample size).")
    var width: Int?

    @Option(help: "Image height in pixels (default: the model's sample size).")
    var height: Int?

    func run() throws { try options.compute(generate) }

    private func generate() throws {
        let (sampling, paths) = try options.check()
        if let cfgScale { try Validation.checkGuidance(cfgScale) }
        if width != nil || height != nil { try Validation.checkSize(width: width ?? 8, height: height ?? 8) }
        let s = try options.summary()
        try requireModel(s, options.model, for: .sample)
        if let k = classLabel {
            guard let n = s.numClassEmbeds else { throw CLIError("model \(options.model) is not class-conditional: drop --class") }
            guard k >= 0, k < n else { throw CLIError("--class \(k) outside 0..<\(n)") }
        } else if let n = s.numClassEmbeds {
            throw CLIError("model \(options.model) is class-conditional (\(n) classes): pass --class")
        }
        let cfgScale = self.cfgScale ?? (classLabel == nil ? 1 : 3)
        let seed = options.resolvedSeed
        options.log("loading \(options.model)")
        let pipe = LatentDiffusionPipeline(bundle: try options.loadBundle())
        let bar = options.progressBar("sample")
        let result = try pipe.sample(sampling, classLabel: classLabel, guidanceScale: cfgScale, width: width, height: height,
                                     generator: options.generator(seed: seed), progress: bar.update)
        var params = options.parameters(seed: seed, steps: sampling.steps, scheduler: pipe.bundle.schedulerConfig.className)
        options.recordLoRAs(&params, pipe.bundle)
        if let k = classLabel {
            params.extra.append(.init("Class", "\(k)"))
            params.cfgScale = cfgScale
        }
        options.log("seed \(seed)")
        try options.write(result, to: paths, parameters: params)
    }
}
