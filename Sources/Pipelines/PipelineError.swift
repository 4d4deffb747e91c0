// The error of the pipelines and model loading: typed cases for what a caller may act on (a model of another kind, a
// model file or YAML config that cannot be used, a bad request value, an option the model does not take, a mask of
// another size, a bad layout, a cancelled run), one sentence for the rest (internal invariants). The `ldm` command line words these
// for its users (which command or flag fits); the messages here name no command.
import Diffusion
import Foundation

public enum PipelineError: Error, CustomStringConvertible, Equatable {
    /// The progress handler returned false.
    case cancelled
    /// `model` is `kind`, which does not run `task`.
    case wrongModelKind(model: String, kind: ModelKind, task: GenerationTask)
    /// The model file cannot be read (`why`: the checkpoint layer's reason).
    case unreadableModel(String, String)
    /// The model's files are not a model this program runs (`why` says what is missing or wrong).
    case invalidModel(String, String)
    /// A CompVis LDM-BERT checkpoint: its architecture and vocabulary are not in the weights, they need its YAML.
    case ldmBertNeedsConfig(String)
    /// The WordPiece vocabulary of a CompVis LDM-BERT checkpoint is not where it was `given`, or (nil) not beside it.
    case missingBERTVocabulary(checkpoint: String, given: String?)
    /// A CompVis YAML config the loader cannot use with these weights (`why` names the key).
    case invalidModelConfig(String)
    /// A request value out of range: `name` is the parameter (width, steps, strength, cfg scale, eta, batch size,
    /// clip skip, class, label offset, timestep spacing), `value` the value given; the message is "<name> <why>".
    case invalidArgument(name: String, value: String, why: String)
    /// A sampler name that is not one of `SchedulerFactory.validNames`.
    case unknownSampler(String)
    /// An option this model or sampler does not take (prompt emphasis on LDM-BERT, timestep spacing on a sampler with
    /// its own grid); the message is "<name> <why>".
    case unsupportedOption(name: String, why: String)
    /// The inpainting mask and the init image differ in size.
    case maskSizeMismatch(maskWidth: Int, maskHeight: Int, imageWidth: Int, imageHeight: Int)
    /// A layout-to-image object list that cannot be used (`why` names the object and the key).
    case invalidLayout(String)
    /// Any other refusal, in one sentence naming the bad value.
    case message(String)

    public init(_ message: String) {
        self = .message(message)
    }

    public var description: String {
        switch self {
        case .cancelled:
            return "generation cancelled"
        case let .wrongModelKind(model, kind, task):
            return "\(model) is not \(task.modelName): it is \(kind.name)"
        case let .unreadableModel(model, why):
            return "model \(model) cannot be read: \(why)"
        case let .invalidModel(model, why):
            return "\(model): \(why)"
        case .ldmBertNeedsConfig(let model):
            return "\(model) is a CompVis LDM-BERT text-to-image checkpoint (BERTEmbedder: cond_stage_model.transformer.token_emb): "
                + "it loads with its YAML config (txt2img-1p4B-eval.yaml) and bert-base-uncased's vocab.txt"
        case .missingBERTVocabulary(_, let given?):
            return "BERT vocabulary \(given): no such file or folder"
        case .missingBERTVocabulary(let checkpoint, nil):
            return "\((checkpoint as NSString).lastPathComponent) is an LDM-BERT (BERTEmbedder) model: its prompts are tokenized with "
                + "bert-base-uncased's WordPiece vocabulary (CompVis downloads BertTokenizerFast \"bert-base-uncased\"), which is not "
                + "shipped here: give its vocab.txt, or put vocab.txt beside the checkpoint"
        case .invalidModelConfig(let why):
            return "YAML config: \(why)"
        case let .invalidArgument(name, _, why), let .unsupportedOption(name, why):
            return "\(name) \(why)"
        case .unknownSampler(let name):
            return "unknown sampler '\(name)'; valid: \(SchedulerFactory.validNames.joined(separator: ", "))"
        case let .maskSizeMismatch(mw, mh, iw, ih):
            return "mask is \(mw)x\(mh) but the init image is \(iw)x\(ih); they must match"
        case .invalidLayout(let why):
            return why
        case .message(let text):
            return text
        }
    }
}

extension GenerationTask {
    /// "a super-resolution model": what a model must be to run this task.
    public var modelName: String {
        switch self {
        case .sample:
            return "an unconditional or class-conditional model"
        case .txt2img:
            return "a text-to-image model"
        case .img2img:
            return "a text-to-image model that runs img2img"
        case .inpaint:
            return "a text-to-image or inpainting model"
        case .upscale:
            return "a super-resolution model"
        case .semantic:
            return "a semantic-synthesis model"
        case .layout:
            return "a layout-to-image model"
        }
    }
}

extension ModelKind {
    /// Throws `PipelineError.wrongModelKind` unless this kind runs `task`.
    public func require(_ task: GenerationTask, model: String) throws {
        guard serves(task) else {
            throw PipelineError.wrongModelKind(model: model, kind: self, task: task)
        }
    }

    /// The prompt encoder of a text-conditioned (or inpainting) model.
    public var textEncoder: TextEncoderKind? {
        switch self {
        case .text(let e), .inpainting(let e):
            return e
        default:
            return nil
        }
    }
}
