// The part of a training checkpoint every trainer shares (diffusers accelerator.save_state / load_state: the
// random state and the data position beside the weights and optimizer state), written and read once here for the
// LDM trainer (TrainingCheckpoint.swift) and the first-stage trainer (AutoencoderTrainerSetup.swift):
// metadata format, step, epoch, batch_in_epoch, seed, batch_size, precision and the generator_state tensor (the
// 5056-byte torch.Generator state, U8); the checks a resume makes (format, same batch size and seed so the data order
// continues, same precision, a data position inside this dataset); and the tidying after it on rank 0 (log lines
// after the checkpoint's step dropped, temporary files of cut-off writes deleted). Each trainer adds its own tensors
// and metadata keys (prefixes such as "model.", "optimizer.", "ema.").
import Checkpoints
import Foundation
import NeuralNetwork
import TensorCore

/// A trainer's position in its run: what a checkpoint restores besides tensors.
struct TrainingPosition {
    var step: Int, epoch: Int, batchInEpoch: Int
}

/// A checkpoint being read for a resume, already checked against the resuming run.
struct ResumableCheckpoint {
    let url: URL
    let meta: [String: String]
    let records: [String: TensorRecord]

    /// The latest checkpoint of `runDir`, checked: its format is `format` (`kind` names it in the error), and batch
    /// size, seed and precision are this run's.
    init(latestIn runDir: URL, format: String, kind: String, batchSize: Int, seed: UInt64, precision: TrainingPrecision) throws {
        guard let url = Trainer.latestCheckpoint(in: runDir) else {
            throw TrainingError("no checkpoint (checkpoints/step-*.safetensors) in \(runDir.path)")
        }
        let file = try SafeTensors(url: url)
        self.url = url
        meta = file.metadata ?? [:]
        guard meta["format"] == format else {
            throw TrainingError("\(url.path) is not \(kind) (metadata format \(meta["format"] ?? "missing"))")
        }
        records = file.tensors
        guard try int("batch_size") == batchSize, meta["seed"] == String(seed) else {
            throw TrainingError("\(url.path) was written with batch_size \(meta["batch_size"] ?? "?") and seed \(meta["seed"] ?? "?"); the data order would not continue")
        }
        // Checkpoints written before mixed precision existed were float32 runs.
        let saved = meta["precision"] ?? TrainingPrecision.float32.rawValue
        guard saved == precision.rawValue else {
            throw TrainingError("\(url.path) was trained with precision \(saved); this configuration uses \(precision.rawValue) (a resumed run keeps its precision: set precision to \(saved))")
        }
    }

    /// A non-negative integer of the metadata.
    func int(_ key: String) throws -> Int {
        guard let s = meta[key], let v = Int(s), v >= 0 else { throw TrainingError("\(url.path): metadata \(key) missing or invalid") }
        return v
    }

    /// The records under `prefix`, with it removed.
    func group(_ prefix: String) -> [String: TensorRecord] { mapKeys(records, [.stripPrefix(prefix)]) }

    /// `optimizer`'s moments under `prefix` and its step count from the metadata `stepKey`.
    func restore(_ optimizer: AdamW, prefix: String, stepKey: String) throws {
        try optimizer.restore(state: group(prefix).mapValues { try $0.tensor().float32() }, stepCount: try int(stepKey))
    }

    /// The generator's state, and the data position (checked against this dataset's batches per epoch).
    func restore(_ generator: TorchGenerator, batchesPerEpoch: Int) throws -> TrainingPosition {
        guard let g = records["generator_state"], g.dtype == .U8 else { throw TrainingError("\(url.path) lacks generator_state (U8)") }
        try generator.setState([UInt8](try g.rawData()))
        let position = TrainingPosition(step: try int("step"), epoch: try int("epoch"), batchInEpoch: try int("batch_in_epoch"))
        guard position.batchInEpoch < batchesPerEpoch else {
            throw TrainingError("\(url.path): batch_in_epoch \(position.batchInEpoch) is past this dataset's \(batchesPerEpoch) batches")
        }
        return position
    }

    /// After a resume, on rank 0 only: the log keeps the lines up to the checkpoint's step, and unfinished checkpoint
    /// writes of a killed run are deleted.
    static func tidy(runDir: URL, log: URL, step: Int, communicator: Communicator) throws {
        guard communicator.isRoot else { return }
        try trimJSONLines(log, keepingStepsUpTo: step)
        Trainer.removeUnfinishedCheckpoints(in: runDir)
    }

    /// The shared part of a checkpoint being written: the generator_state entry and the metadata every trainer
    /// writes (the trainer adds its own).
    static func common(format: String, position: TrainingPosition, seed: UInt64, batchSize: Int, precision: TrainingPrecision,
                       generator: TorchGenerator) -> (entry: SafeTensorsEntry, meta: [String: String]) {
        let state = generator.state
        return (SafeTensorsEntry(name: "generator_state", dtype: .U8, shape: [state.count], bytes: Data(state)),
                ["format": format, "step": String(position.step), "epoch": String(position.epoch),
                 "batch_in_epoch": String(position.batchInEpoch), "seed": String(seed), "batch_size": String(batchSize),
                 "precision": precision.rawValue])
    }
}
