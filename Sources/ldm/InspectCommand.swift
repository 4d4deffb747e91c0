// `ldm inspect`: tensor names, shapes, dtypes, parameter counts per component and the detected
// model family of a CompVis checkpoint (.ckpt/.pt/.bin torch zip, .safetensors) or diffusers folder.
// The work is done by CompVis.Inspection / CheckpointReport; the model kind and the commands that run it by
// Pipelines.ModelSummary / ModelKind.
import ArgumentParser
import Checkpoints
import CompVis
import Foundation
import Pipelines

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
        // A latent diffusion model: what conditions it and which commands run it (without a CompVis YAML, from the
        // weights' names and shapes; other checkpoints, such as a lone VAE, have no kind).
        if let summary = try? ModelSummary.read(URL(fileURLWithPath: path)) {
            let commands = summary.kind.tasks.map { "ldm \($0.rawValue)" }
            print("model kind: \(summary.kind.name); runs with: \(commands.isEmpty ? "no command yet" : commands.joined(separator: ", "))")
        }
    }
}
