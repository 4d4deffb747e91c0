// `ldm inspect`: tensor names, shapes, dtypes, parameter counts per component and the detected
// model family of a CompVis checkpoint (.ckpt/.pt/.bin torch zip, .safetensors) or diffusers folder.
// The work is done by Checkpoints.Inspection / CheckpointReport.
import ArgumentParser
import Checkpoints

struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "inspect",
        abstract: "Show the tensors, dtypes, parameter counts and model family of a checkpoint file or diffusers folder.")

    @Argument(help: "A .ckpt/.pt/.bin (torch zip) or .safetensors file, or a diffusers folder.")
    var path: String

    @Option(help: "Weight variant to prefer in a diffusers folder (e.g. fp16).")
    var variant: String?

    @Option(name: .customLong("max-tensors"), help: "List at most this many tensors (all by default).")
    var maxTensors: Int?

    @Flag(help: "Report the EMA weights (model_ema.*) in place of the model weights.")
    var ema = false

    func validate() throws {
        if let n = maxTensors, n < 0 { throw ValidationError("--max-tensors must be 0 or more, got \(n)") }
    }

    func run() throws {
        // CheckpointError is Error & CustomStringConvertible: ArgumentParser prints "Error: <message>"
        // on stderr and exits with status 1.
        print(try Inspection.report(path: path, variant: variant, maxTensors: maxTensors ?? .max, ema: ema), terminator: "")
    }
}
