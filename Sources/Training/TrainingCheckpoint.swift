// Training checkpoints, in the spirit of diffusers accelerator.save_state / CompVis ModelCheckpoint(last.ckpt), as one
// safetensors file per save (written atomically: temp file, fsync, rename): "model.<name>" weights, "ema.<name>"
// LitEma shadows, "<prefix><name>" weights of the extra trainable modules (a trainable text encoder:
// "text_encoder.<name>"), "optimizer.exp_avg.<name>" / "optimizer.exp_avg_sq.<name>" AdamW moments, "generator_state" (the
// 5056-byte torch.Generator state, U8) and metadata (step, epoch, batch_in_epoch, optimizer_step, ema_num_updates,
// scale_factor, precision). `resume` restores all of it (refusing a run whose precision differs) and trims the loss
// log to the checkpoint's step.
import Checkpoints
import Foundation
import NeuralNetwork
import TensorCore

extension Trainer {
    static let checkpointFormat = "ldm-train-checkpoint-1"

    public func checkpointURL(step: Int) -> URL {
        checkpointsDir.appendingPathComponent(String(format: "step-%08d.safetensors", step))
    }

    /// The checkpoint with the highest step in `runDir/checkpoints`, if any.
    public static func latestCheckpoint(in runDir: URL) -> URL? {
        let dir = runDir.appendingPathComponent("checkpoints")
        let files = (try? FileManager.default.contentsOfDirectory(atPath: dir.path)) ?? []
        let steps = files.compactMap { name -> Int? in
            guard name.hasPrefix("step-"), name.hasSuffix(".safetensors") else { return nil }
            return Int(name.dropFirst(5).dropLast(12))
        }
        return steps.max().map { dir.appendingPathComponent(String(format: "step-%08d.safetensors", $0)) }
    }

    static func entry(_ name: String, _ t: Tensor) -> SafeTensorsEntry {
        let c = t.float32().contiguous()
        let bytes = withExtendedLifetime(c) { Data(bytes: c.data, count: c.count * 4) }
        return SafeTensorsEntry(name: name, dtype: .F32, shape: t.shape, bytes: bytes)
    }

    @discardableResult
    public func saveCheckpoint() throws -> URL {
        var entries = model.namedParameters.map { Self.entry("model.\($0.0)", $0.1) }
        for (prefix, module) in extraModules { entries += module.namedParameters.map { Self.entry(prefix + $0.0, $0.1) } }
        if let ema { entries += ema.names.compactMap { n in ema.shadow[n].map { Self.entry("ema.\(n)", $0) } } }
        entries += optimizer.stateTensors.map { Self.entry("optimizer.\($0.0)", $0.1) }
        let state = generator.state
        entries.append(SafeTensorsEntry(name: "generator_state", dtype: .U8, shape: [state.count], bytes: Data(state)))
        var meta = ["format": Self.checkpointFormat, "step": String(step), "epoch": String(epoch),
                    "batch_in_epoch": String(batchInEpoch), "optimizer_step": String(optimizer.stepCount),
                    "seed": String(options.seed), "batch_size": String(options.batchSize),
                    "trainable_modules": extraModules.map(\.prefix).joined(separator: ","),
                    "precision": options.precision.rawValue]
        if let ema { meta["ema_num_updates"] = String(ema.numUpdates) }
        if let scaleFactor { meta["scale_factor"] = String(scaleFactor.bitPattern) }
        let url = checkpointURL(step: step)
        try SafeTensors.write(entries, metadata: meta, to: url)
        return url
    }

    /// Restores the latest checkpoint of `runDir` (default: this trainer's run directory). Throws when there is none
    /// or when it does not fit this trainer's model, EMA or batching.
    public func resume(from dir: URL? = nil) throws {
        let run = dir ?? runDir
        guard let url = Self.latestCheckpoint(in: run) else { throw TrainingError("no checkpoint (checkpoints/step-*.safetensors) in \(run.path)") }
        let file = try SafeTensors(url: url)
        let meta = file.metadata ?? [:]
        guard meta["format"] == Self.checkpointFormat else {
            throw TrainingError("\(url.path) is not a training checkpoint (metadata format \(meta["format"] ?? "missing"))")
        }
        func int(_ key: String) throws -> Int {
            guard let s = meta[key], let v = Int(s), v >= 0 else { throw TrainingError("\(url.path): metadata \(key) missing or invalid") }
            return v
        }
        guard try int("batch_size") == options.batchSize, meta["seed"] == String(options.seed) else {
            throw TrainingError("\(url.path) was written with batch_size \(meta["batch_size"] ?? "?") and seed \(meta["seed"] ?? "?"); the data order would not continue")
        }
        // Checkpoints written before mixed precision existed were float32 runs.
        let savedPrecision = meta["precision"] ?? TrainingPrecision.float32.rawValue
        guard savedPrecision == options.precision.rawValue else {
            throw TrainingError("\(url.path) was trained with precision \(savedPrecision); this configuration uses \(options.precision.rawValue) (a resumed run keeps its precision: set precision to \(savedPrecision))")
        }
        let records = file.tensors
        func group(_ prefix: String) -> [String: TensorRecord] { mapKeys(records, [.stripPrefix(prefix)]) }
        let saved = (meta["trainable_modules"] ?? "").split(separator: ",").map(String.init)
        guard saved == extraModules.map(\.prefix) else {
            let list = { (a: [String]) in a.isEmpty ? "the UNet only" : "the UNet and " + a.map { $0 + "*" }.joined(separator: ", ") }
            throw TrainingError("\(url.path) trained \(list(saved)); this configuration trains \(list(extraModules.map(\.prefix))) (cond_stage_trainable must match the run)")
        }
        try model.load(group("model."), component: "\(url.lastPathComponent) model")
        for (prefix, module) in extraModules {
            try module.load(group(prefix), component: "\(url.lastPathComponent) \(prefix.dropLast())")
        }
        if let ema {
            guard let n = meta["ema_num_updates"].flatMap(Int.init) else { throw TrainingError("\(url.path) has no EMA state but EMA is enabled") }
            try ema.restore(shadow: group("ema.").mapValues { try $0.tensor().float32() }, numUpdates: n)
        }
        try optimizer.restore(state: group("optimizer.").mapValues { try $0.tensor().float32() }, stepCount: try int("optimizer_step"))
        guard let g = records["generator_state"], g.dtype == .U8 else { throw TrainingError("\(url.path) lacks generator_state (U8)") }
        try generator.setState([UInt8](try g.rawData()))
        let restoredEpoch = try int("epoch"), restoredBatch = try int("batch_in_epoch")
        guard restoredBatch < sampler.batchesPerEpoch else { throw TrainingError("\(url.path): batch_in_epoch \(restoredBatch) is past this dataset's \(sampler.batchesPerEpoch) batches") }
        if let s = meta["scale_factor"] {
            guard let bits = UInt32(s) else { throw TrainingError("\(url.path): invalid scale_factor") }
            scaleFactor = Float(bitPattern: bits)
        } else { scaleFactor = nil }
        step = try int("step"); epoch = restoredEpoch; batchInEpoch = restoredBatch
        if communicator.isRoot { try trimLog(after: step); Self.removeUnfinishedCheckpoints(in: run) }
    }

    /// Deletes the temporary files of checkpoint writes that a killed process left unfinished
    /// (".step-N.safetensors.tmp-XXXXXX", see FileIO.AtomicFile): they were never renamed, so never a checkpoint.
    /// Returns their names.
    @discardableResult
    public static func removeUnfinishedCheckpoints(in runDir: URL) -> [String] {
        let dir = runDir.appendingPathComponent("checkpoints")
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: dir.path)) ?? [])
            .filter { $0.hasPrefix(".step-") && $0.contains(".safetensors.tmp-") }
        for n in names { try? FileManager.default.removeItem(at: dir.appendingPathComponent(n)) }
        return names
    }

    /// Drops log lines of steps after `step` (written after the checkpoint by an interrupted run).
    func trimLog(after step: Int) throws { try trimJSONLines(logURL, keepingStepsUpTo: step) }
}
