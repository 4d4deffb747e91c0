// `ldm semantic`: semantic image synthesis with a CompVis LatentDiffusion whose cond stage is SpatialRescaler
// (models/ldm/semantic_synthesis256|512/config.yaml, the Landscapes models): `--config YAML --model model.ckpt
// --segmentation labels.png`. The label map holds a class index per pixel (a grayscale or palette PNG, read as
// taming's sflckr.py reads it); the image has the map's size, or --width/--height, to which the map is resized with
// nearest-neighbour (PIL NEAREST).
import ArgumentParser
import Foundation
import Imaging
import Pipelines

struct Semantic: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "semantic",
        abstract: "Semantic image synthesis: an image from a label map (CompVis semantic-synthesis LDM, with --config).")

    @OptionGroup var options: GenerationOptions

    @Option(help: "The label map: a PNG whose pixel values are class indices (8-bit grayscale, or a palette PNG: its palette indices), e.g. COCO-Stuff labels 0...181 for the Landscapes models.")
    var segmentation: String

    @Option(name: .customLong("label-offset"), parsing: .unconditional,
            help: "Added to every pixel value before use, in 8-bit arithmetic (1 = taming's shift_segmentation: 255 \"unlabeled\" becomes 0, the other labels move up by one; -1 makes 1-based labels 0-based). Default 0, as the Landscapes data.")
    var labelOffset: Int = 0

    @Option(help: "Image width in pixels (default: the label map's width; the map is resized with nearest-neighbour).")
    var width: Int?

    @Option(help: "Image height in pixels (default: the label map's height; the map is resized with nearest-neighbour).")
    var height: Int?

    func run() throws { try options.compute(generate) }

    private func generate() throws {
        guard options.config != nil else {
            throw CLIError("semantic synthesis models are CompVis checkpoints: pass their YAML with --config (e.g. semantic_synthesis256/config.yaml)")
        }
        let (sampling, paths) = try options.check()
        try FileChecks.readableFile(segmentation, what: "segmentation map")
        guard (-255...255).contains(labelOffset) else {
            throw CLIError("--label-offset must be in -255...255, got \(labelOffset)")
        }
        let s = try options.summary()
        try requireModel(s, options.model, for: .semantic)
        guard let geometry = s.semanticSynthesis else {
            throw CLIError("model \(options.model) (--config \(options.config ?? "")) is not a semantic-synthesis model: its cond_stage_config must be SpatialRescaler with conditioning_key concat")
        }
        let map = try geometry.labels(ImageIO.loadLabelMap(path: segmentation), offset: labelOffset, name: "segmentation map \(segmentation)")
        let (w, h) = (width ?? map.width, height ?? map.height)
        do { try geometry.checkSize(width: w, height: h, what: width == nil && height == nil ? "segmentation map \(segmentation): its" : "image") } catch let e as PipelineError where width == nil && height == nil {
            throw CLIError("\(e) (pass --width/--height to resize the map with nearest-neighbour)")
        }
        let labels = (w, h) == (map.width, map.height) ? map : try map.resized(width: w, height: h, filter: .nearest)
        let seed = options.resolvedSeed
        options.log("loading \(options.model)")
        let pipe = LatentDiffusionPipeline(bundle: try options.loadBundle())
        let bar = options.progressBar("semantic")
        let result = try pipe.semanticSynthesis(labels, sampling, generator: options.generator(seed: seed), progress: bar.update)
        var params = options.parameters(seed: seed, steps: sampling.steps, scheduler: pipe.bundle.schedulerConfig.className)
        options.recordLoRAs(&params, pipe.bundle)
        params.extra.append(.init("Segmentation", URL(fileURLWithPath: segmentation).lastPathComponent))
        if labelOffset != 0 { params.extra.append(.init("Label offset", "\(labelOffset)")) }
        options.log("seed \(seed)")
        try options.write(result, to: paths, parameters: params)
    }
}
