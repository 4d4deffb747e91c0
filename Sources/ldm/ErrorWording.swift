// The `ldm` wording of the library's typed errors: which command runs a model of another kind, which flag loads a
// checkpoint. The library's own messages name no command (Pipelines.PipelineError).
import Foundation
import Pipelines

/// An error `ldm` prints as it is ("Error: <description>", exit status 1).
struct CLIError: Error, CustomStringConvertible {
    let description: String

    init(_ description: String) {
        self.description = description
    }
}

extension PipelineError {
    /// The message `ldm` prints for this error.
    var commandLineMessage: String {
        switch self {
        case let .wrongModelKind(model, kind, task):
            let fit = kind.tasks.first.map { ": use `ldm \($0.rawValue)`" } ?? ""
            return "model \(model) is not \(task.modelName): it is \(kind.name)\(fit)"
        case .ldmBertNeedsConfig(let model):
            return "\(model) is a CompVis LDM-BERT text-to-image checkpoint (BERTEmbedder: cond_stage_model.transformer.token_emb): "
                + "pass its YAML with --config (txt2img-1p4B-eval.yaml) and bert-base-uncased's vocab.txt with --bert-vocab"
        case .missingBERTVocabulary(_, let given?):
            return "--bert-vocab \(given): no such file or folder"
        case .missingBERTVocabulary(let checkpoint, nil):
            return "\(URL(fileURLWithPath: checkpoint).lastPathComponent) is an LDM-BERT (BERTEmbedder) model: its prompts are tokenized with "
                + "bert-base-uncased's WordPiece vocabulary (CompVis downloads BertTokenizerFast \"bert-base-uncased\"), which is not "
                + "shipped here: pass --bert-vocab PATH/vocab.txt or put vocab.txt beside the checkpoint"
        default:
            return description
        }
    }
}

/// Runs `body` with the library's errors in `ldm`'s words.
func worded<T>(_ body: () throws -> T) throws -> T {
    do {
        return try body()
    } catch let e as PipelineError {
        throw CLIError(e.commandLineMessage)
    }
}

/// Checks, before any weight is loaded, that the model runs `task` (ModelKind.tasks, the one answer) and has the
/// first stage its pipeline decodes with.
func requireModel(_ s: ModelSummary, _ path: String, for task: GenerationTask) throws {
    try s.kind.require(task, model: path)
    switch (task, s.kind.textEncoder) {
    case (.txt2img, .ldmBert?):
        guard s.firstStage != .none else {
            throw CLIError("model \(path) has no first stage (vqvae/)")
        }
    case (_, _?):
        guard s.firstStage == .autoencoderKL else {
            throw CLIError("model \(path) has no AutoencoderKL (vae/)")
        }
    case (.upscale, nil):
        guard s.firstStage == .vqModel else {
            throw CLIError("model \(path) is not a super-resolution model (VQ first stage, UNet taking latents + the low-res image)")
        }
    default:
        break
    }
}
