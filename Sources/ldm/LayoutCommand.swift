// `ldm layout`: CompVis' layout-to-image model (models/ldm/layout2img-openimages256: --config config.yaml --model
// model.ckpt) from a JSON list of objects (Pipelines.LayoutObject.parseList), sampled as CompVis does
// (Pipelines.LayoutToImagePipeline). Everything the command can check without the model (options, the layout file,
// the outputs) is checked first; the layout against the model's limits (class range, object count) before loading
// weights.
import ArgumentParser
import CompVis
import Foundation
import Pipelines
import Tokenizers

struct Layout: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "layout", abstract: "Generate an image from a layout of objects (CompVis layout-to-image, layout2img-openimages256).",
        discussion: """
        --objects is a JSON file: a list of objects (or {"objects": [...]}), each {"class": N or "Name", \
        "box": [x0, y0, x1, y1]} with coordinates as fractions of the image (0,0 = top left, 1,1 = bottom right), \
        optionally "group_of", "occluded", "depiction", "inside": true. Names are the 340 Open Images classes of \
        taming-transformers' category numbering (Sources/Tokenizers/Resources/openimages-categories.txt, line N + 1 = class N). At most 30 objects for the released \
        model (max_seq_len 92 = 3 tokens per object + 2); the model was trained on shuffled objects, their order is kept.
        """)

    @OptionGroup var options: GenerationOptions

    @Option(help: "The layout: a JSON file of objects (see above).")
    var objects: String

    @Option(name: .customLong("object-classes"), help: "The layout tokenizer's number of object classes (no_object_classes; flags are encoded as class + N * flag bits). Default: 340, the Open Images classes of taming's numbering.")
    var objectClasses: Int?

    @Option(help: "Image width in pixels, a multiple of the first stage's factor (default: the model's, 256 for layout2img-openimages256).")
    var width: Int?

    @Option(help: "Image height in pixels (default: the model's).")
    var height: Int?

    func run() throws { try options.compute(generate) }

    private func generate() throws {
        let (sampling, paths) = try options.check()
        if let n = objectClasses, n < 1 { throw CLIError("--object-classes must be positive, got \(n)") }
        if width != nil || height != nil { try Validation.checkSize(width: width ?? 8, height: height ?? 8, multiple: 4) }
        try FileChecks.readableFile(objects, what: "layout (--objects)")
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: objects)) } catch { throw CLIError("--objects \(objects) cannot be read: \(error.localizedDescription)") }
        guard options.config != nil else {
            throw CLIError("layout models are CompVis checkpoints: pass --config (models/ldm/layout2img-openimages256/config.yaml) with --model model.ckpt")
        }
        let summary = try options.summary()
        try requireModel(summary, options.model, for: .layout)
        let builder = try options.compVisConfig().layoutBuilder(objectClasses: objectClasses ?? OpenImagesCategories.count)
        let layout = try LayoutObject.parseList(data, classNames: OpenImagesCategories.names(), objectClasses: builder.noObjectClasses,
                                                maxObjects: builder.noMaxObjects)
        do { _ = try builder.build(layout.map(\.annotation)) } catch { throw CLIError("layout: \(error)") }   // tokens < vocab_size
        let seed = options.resolvedSeed
        options.log("loading \(options.model)")
        let pipe = try LayoutToImagePipeline(bundle: try options.loadBundle(), objectClasses: objectClasses)
        let bar = options.progressBar("layout")
        let result = try pipe.layoutToImage(layout, sampling, width: width, height: height, generator: options.generator(seed: seed),
                                            progress: bar.update)
        var params = options.parameters(seed: seed, steps: sampling.steps, scheduler: pipe.bundle.schedulerConfig.className)
        options.recordLoRAs(&params, pipe.bundle)
        params.extra += [.init("Layout objects", "\(layout.count)"), .init("Layout", LayoutObject.encodeList(layout))]
        options.log("seed \(seed)")
        try options.write(result, to: paths, parameters: params)
    }
}
