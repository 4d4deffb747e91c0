// `ldm convert`: torch zip / safetensors / diffusers folder -> one safetensors file, diffusers folder
// -> CompVis-named single file, CompVis file -> diffusers folder (unet/ vae/ text_encoder/). The
// name mapping is the CompVis module's rename tables (after diffusers' single_file_utils.py).
import ArgumentParser
import Checkpoints
import CompVis
import Foundation

extension ConvertOptions.Target: ExpressibleByArgument {}
extension ConvertOptions.DType: ExpressibleByArgument {}

struct Convert: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "convert",
        abstract: "Convert a checkpoint between torch zip, safetensors, CompVis single-file and diffusers-folder layouts.",
        discussion: """
            Without --to, an OUT ending in .safetensors gets one file (CompVis names when IN is a diffusers \
            folder, the input's names otherwise) and any other OUT gets a diffusers folder.
            """)

    @Argument(help: "Input: .ckpt/.pt/.bin (torch zip), .safetensors, or a diffusers folder.")
    var input: String

    @Argument(help: "Output file or folder (must not exist unless --overwrite).")
    var output: String

    @Option(help: "Output layout (default: from OUT, see above).")
    var to: ConvertOptions.Target?

    @Flag(help: "Replace OUT when it exists.")
    var overwrite = false

    @Option(help: "Floating-point dtype of the output (integer tensors are kept).")
    var dtype: ConvertOptions.DType = .keep

    @Flag(help: "Use the EMA weights (model_ema.*) in place of the model weights.")
    var ema = false

    @Option(help: "Weight variant to prefer when IN is a diffusers folder (e.g. fp16).")
    var variant: String?

    @Option(name: .customLong("bert-vocab"), help: "bert-base-uncased's vocab.txt, written as tokenizer/ when IN is a CompVis LDM-BERT (BERTEmbedder) text-to-image file.")
    var bertVocab: String?

    func run() throws {
        var options = ConvertOptions(target: to, overwrite: overwrite, dtype: dtype, ema: ema, variant: variant)
        if let v = bertVocab {
            guard FileManager.default.fileExists(atPath: v) else { throw CheckpointError("--bert-vocab \(v): no such file") }
            options.bertVocabulary = URL(fileURLWithPath: v)
        }
        let lines = try Converter.convert(input: URL(fileURLWithPath: input), output: URL(fileURLWithPath: output), options: options)
        for l in lines { print(l) }
    }
}
