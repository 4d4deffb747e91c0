// Training checkpoints, in the spirit of diffusers accelerator.save_state / CompVis ModelCheckpoint(last.ckpt), as one
// safetensors file per save (written atomically: temp file, fsync, rename): "model.<name>" weights, "ema.<name>"
// LitEma shadows, "<prefix><name>" weights of the extra trainable modules (a trainable text encoder:
// "text_encoder.<name>"), "optimizer.exp_avg.<name>" / "optimizer.exp_avg_sq.<name>" AdamW moments, "generator_state" (the
// 5056-byte torch.Generator state, U8) and metadata (step, epoch, batch_in_epoch, optimizer_step, ema_num_updates,
// scale_factor, precision). `resume` restores all of it (refusing a run whose precision differs) and trims the loss
// log to the checkpoint's step. The parts every trainer shares are ResumableCheckpoint's.
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
        var entries = trainsModel ? model.namedParameters.map { Self.entry("model.\($0.0)", $0.1) } : []
        for (prefix, module) in extraModules { entries += module.namedParameters.map { Self.entry(prefix + $0.0, $0.1) } }
        if let ema { entries += ema.names.compactMap { n in ema.shadow[n].map { Self.entry("ema.\(n)", $0) } } }
        entries += optimizer.stateTensors.map { Self.entry("optimizer.\($0.0)", $0.1) }
        let common = ResumableCheckpoint.common(format: Self.checkpointFormat, position: TrainingPosition(step: step, epoch: epoch, batchInEpoch: batchInEpoch),
                                                seed: options.seed, batchSize: options.batchSize, precision: options.precision, generator: generator)
        entries.append(common.entry)
        var meta = common.meta.merging(["optimizer_step": String(optimizer.stepCount),
                                        "trainable_modules": extraModules.map(\.prefix).joined(separator: ","),
                                        "trains_model": String(trainsModel)]) { $1 }
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
        let ckpt = try ResumableCheckpoint(latestIn: run, format: Self.checkpointFormat, kind: "a training checkpoint",
                                           batchSize: options.batchSize, seed: options.seed, precision: options.precision)
        let (url, meta) = (ckpt.url, ckpt.meta)
        let saved = (meta["trainable_modules"] ?? "").split(separator: ",").map(String.init)
        guard saved == extraModules.map(\.prefix) else {
            let list = { (a: [String]) in a.isEmpty ? "the UNet only" : "the UNet and " + a.map { $0 + "*" }.joined(separator: ", ") }
            throw TrainingError("\(url.path) trained \(list(saved)); this configuration trains \(list(extraModules.map(\.prefix))) (cond_stage_trainable must match the run)")
        }
        guard (meta["trains_model"] ?? "true") == String(trainsModel) else {
            throw TrainingError("\(url.path) was written by a run that \(trainsModel ? "froze" : "trained") the UNet; this one \(trainsModel ? "trains" : "freezes") it")
        }
        if trainsModel { try model.load(ckpt.group("model."), component: "\(url.lastPathComponent) model") }
        for (prefix, module) in extraModules {
            try module.load(ckpt.group(prefix), component: "\(url.lastPathComponent) \(prefix.dropLast())")
        }
        if let ema {
            guard let n = meta["ema_num_updates"].flatMap(Int.init) else { throw TrainingError("\(url.path) has no EMA state but EMA is enabled") }
            try ema.restore(shadow: ckpt.group("ema.").mapValues { try $0.tensor().float32() }, numUpdates: n)
        }
        try ckpt.restore(optimizer, prefix: "optimizer.", stepKey: "optimizer_step")
        let position = try ckpt.restore(generator, batchesPerEpoch: sampler.batchesPerEpoch)
        if let s = meta["scale_factor"] {
            guard let bits = UInt32(s) else { throw TrainingError("\(url.path): invalid scale_factor") }
            scaleFactor = Float(bitPattern: bits)
        } else { scaleFactor = nil }
        step = position.step
        epoch = position.epoch
        batchInEpoch = position.batchInEpoch
        try ResumableCheckpoint.tidy(runDir: run, log: logURL, step: step, communicator: communicator)
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
