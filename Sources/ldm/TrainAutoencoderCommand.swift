// `ldm train autoencoder --config FILE.json [--resume RUN_DIR]`: trains a first stage (AutoencoderKL or VQModel;
// CompVis main.py with configs/autoencoder/*.yaml). Keys: Training/AutoencoderTrainConfig.swift.
import ArgumentParser
import Foundation
import Training

struct TrainAutoencoder: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "autoencoder",
        abstract: "Train a first-stage autoencoder (KL or VQ) on an image folder.",
        discussion: """
            The JSON config needs base_learning_rate, batch_size, max_steps, ckpt_every, data_dir, image_size and one \
            of model (a diffusers vae/vqvae folder; fine-tuned when it holds weights) / model_config (an inline \
            diffusers AutoencoderKL or VQModel config; "_class_name" picks the kind, default AutoencoderKL). Loss keys \
            as CompVis LPIPSWithDiscriminator / VQLPIPSWithDiscriminator: kl_weight, logvar_init, codebook_weight, \
            pixel_loss (VQ: l1 | l2), perceptual_weight with lpips_vgg (torchvision vgg16 weights) and lpips_lin (the \
            lpips package's weights/v0.1/vgg.pth, as shipped), disc_start, disc_weight, disc_factor, disc_num_layers, disc_in_channels, \
            disc_ndf, disc_loss (hinge | vanilla), use_discriminator. Optimizer: adam_beta1 (0.5), adam_beta2 (0.9), \
            adam_epsilon, weight_decay, max_grad_norm, lr_scheduler, lr_warmup_steps, scale_lr. Also seed, \
            random_crop, random_flip, prefetch (default true: the next batch is decoded on a background thread \
            during each step; false loads it synchronously, with the same batches), run_dir, sample_every (reconstruction grids in RUN_DIR/samples), export_dtype \
            (float32 | bfloat16 | float16), precision ("32-true" | "bf16-mixed", or mixed_precision "no" | "bf16": \
            bf16 mixed precision as for train ldm). The trained model is written to RUN_DIR/vae (or vqvae) with the \
            scaling_factor measured on the data.
            """)

    @OptionGroup var runOptions: TrainRunOptions

    func run() throws { try runOptions.dataParallel(train) }

    func train(_ comm: Communicator) throws {
        let print = comm.isRoot ? { Swift.print($0) } : { (_: String) in }
        let configURL = URL(fileURLWithPath: runOptions.config)
        let cfg = try AutoencoderTrainConfig.load(configURL)
        let dir = try runOptions.directory(configRunDir: cfg.runDir)
        let trainer = try cfg.makeTrainer(runDir: dir, communicator: comm, log: print)
        runOptions.configure(trainer.gradients)
        if runOptions.resume != nil {
            try trainer.resume()
            print("resumed \(dir.path) at step \(trainer.step) (epoch \(trainer.epoch))")
        }
        if comm.isRoot { try copyConfig(configURL, into: dir) }
        let every = runOptions.logEvery, total = cfg.maxSteps
        let start = Date()
        let firstStep = trainer.step
        trainer.onStep = { e in
            guard e.step % every == 0 || e.step == total else { return }
            let rate = Double(e.step - firstStep) / max(Date().timeIntervalSince(start), 1e-9)
            let parts = ["total_loss", "rec_loss", "kl_loss", "quant_loss", "p_loss", "g_loss", "d_weight", "disc_loss"]
                .compactMap { k in e.losses[k].map { String(format: "%@ %.5g", k, $0) } }
            print(String(format: "step %d/%d  epoch %d  ", e.step, total, e.epoch) + parts.joined(separator: "  ")
                  + String(format: "  %.2f it/s  ETA %@", rate, formatDuration(Double(total - e.step) / max(rate, 1e-9))))
        }
        print("training \(trainer.model.module.parameterCount) parameters (\(cfg.kind.rawValue)), lr \(trainer.learningRate), \(trainer.sampler.dataset.count) images, run dir \(dir.path)"
              + dataParallelSummary(comm, trainer.shard))
        try trainer.train()
        let reduce = allReduceSummary(trainer.gradients, steps: trainer.step - firstStep, seconds: Date().timeIntervalSince(start))
        if !reduce.isEmpty { print(reduce) }
        print("done: step \(trainer.step); weights in \(dir.appendingPathComponent(trainer.model.folderName).path)")
    }
}

/// The options every `ldm train` command takes: the config, a new run directory or one to resume, the log interval.
struct TrainRunOptions: ParsableArguments {
    @Option(help: "JSON training config.")
    var config: String

    @Option(help: "Continue the run in RUN_DIR from its latest checkpoint.")
    var resume: String?

    @Option(help: "Run directory for a new run (default: the config's run_dir, else runs/<config name>).")
    var runDir: String?

    @Option(help: "Print the losses every N steps.")
    var logEvery = 10

    @Option(help: "Data-parallel (mpirun): gradient bucket size in MiB (DDP's bucket_cap_mb).")
    var bucketCapMb: Double = 25

    @Flag(help: "Data-parallel (mpirun): all-reduce the gradients after the backward pass instead of during it (the same results; for measuring the overlap).")
    var noOverlap = false

    func validate() throws {
        guard logEvery > 0 else { throw ValidationError("--log-every must be positive") }
        guard bucketCapMb.isFinite, bucketCapMb > 0, bucketCapMb <= 1_048_576 else {
            throw ValidationError("--bucket-cap-mb must be a positive number of MiB (at most 1048576), got \(bucketCapMb)")
        }
        guard resume == nil || runDir == nil else { throw ValidationError("give --resume RUN_DIR or --run-dir, not both") }
    }

    /// Runs `body` with the communicator of this launch: Open MPI's when started by mpirun (OMPI_COMM_WORLD_SIZE in
    /// the environment), else one process. On a rank's error the message names the rank and MPI_Abort ends every
    /// rank (mpirun then reports the abort); the last complete checkpoint stays resumable with any number of ranks.
    func dataParallel(_ body: (Communicator) throws -> Void) throws {
        let comm = try DataParallel.communicator()
        guard comm.size > 1 else {
            defer { comm.finalize() }
            try body(comm)
            return
        }
        installTerminationNotice(rank: comm.rank, size: comm.size)
        do {
            try body(comm)
        } catch {
            let line = "ldm train: rank \(comm.rank) of \(comm.size) failed: \(error)\n"
                + "ldm train: aborting all ranks; no partial file is left, and the last checkpoint resumes with any number of ranks (--resume RUN_DIR)\n"
            FileHandle.standardError.write(Data(line.utf8))
            comm.abort(code: 1)
        }
        comm.finalize()
    }

    /// The gradient all-reduce's bucket size and overlap (data-parallel runs).
    func configure(_ gradients: GradientAverager) {
        gradients.bucketBytes = Int(bucketCapMb * 1_048_576)
        gradients.overlapsBackward = !noOverlap
    }

    /// --resume's directory, or a new one (--run-dir, the config's run_dir, runs/<config name>) that must not already
    /// hold checkpoints.
    func directory(configRunDir: String?) throws -> URL {
        if let resume { return URL(fileURLWithPath: resume) }
        let dir = URL(fileURLWithPath: runDir ?? configRunDir ?? "runs/" + URL(fileURLWithPath: config).deletingPathExtension().lastPathComponent)
        if Trainer.latestCheckpoint(in: dir) != nil {
            throw TrainingError("\(dir.path) already holds checkpoints; pass --resume \(dir.path) to continue it")
        }
        return dir
    }
}

/// The line a rank prints when mpirun terminates it (SIGTERM, after another rank died or aborted), kept in a C string
/// made before the signal can arrive: the handler only write()s it and exits (async-signal-safe).
nonisolated(unsafe) private var terminationNotice: UnsafeMutablePointer<CChar>?
nonisolated(unsafe) private var terminationNoticeLength = 0

private func installTerminationNotice(rank: Int, size: Int) {
    let text = "ldm train: rank \(rank) of \(size) terminated by mpirun (another rank failed or was killed); "
        + "checkpoints are written atomically, so the last one in RUN_DIR/checkpoints resumes with any number of ranks (--resume RUN_DIR)\n"
    terminationNotice = strdup(text)
    terminationNoticeLength = strlen(terminationNotice!)
    signal(SIGTERM) { sig in
        if let p = terminationNotice { _ = write(2, p, terminationNoticeLength) }
        _exit(128 + sig)
    }
}

/// The ranks and per-rank batch, for the "training ..." line (empty in one process).
func dataParallelSummary(_ comm: Communicator, _ shard: BatchShard) -> String {
    comm.size > 1 ? ", \(comm.size) ranks (MPI) x \(shard.localBatch) examples of each batch of \(shard.globalBatch)" : ""
}

/// The LDM and LoRA trainers' progress line every `every` steps and at the last: step, epoch, loss, lr, grad norm.
func stepLog(every: Int, total: Int, print: @escaping (String) -> Void) -> (TrainingLogEntry) -> Void {
    { e in
        guard e.step % every == 0 || e.step == total else { return }
        print(String(format: "step %d/%d  epoch %d  loss %.5f  lr %.3g", e.step, total, e.epoch, e.loss, e.lr)
              + (e.gradNorm.map { String(format: "  grad_norm %.4f", $0) } ?? ""))
    }
}

/// Steps per second of the training loop (saves included) and, in data-parallel runs, the gradient all-reduce's
/// share of it (waiting for the slowest rank included).
func allReduceSummary(_ g: GradientAverager, steps: Int, seconds: Double) -> String {
    guard steps > 0 else { return "" }
    let rate = String(format: "%d steps in %.3f s, %.3f steps/s", steps, seconds, Double(steps) / max(seconds, 1e-9))
    guard g.communicator.size > 1 else { return rate }
    return rate + String(format: "; all-reduce of %d gradient values per step in %d buckets (%@): %.3f s not hidden by backward (%.1f%%)",
                         g.lastElements, g.lastBuckets,
                         g.overlapsBackward ? "\(g.lastBucketsStartedDuringBackward) started during backward" : "after backward",
                         g.seconds, 100 * g.seconds / max(seconds, 1e-9))
}

/// Keeps a copy of the config beside the run's checkpoints.
func copyConfig(_ config: URL, into dir: URL) throws {
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    let dest = dir.appendingPathComponent("config.json")
    guard config.standardizedFileURL != dest.standardizedFileURL else { return }
    try? FileManager.default.removeItem(at: dest)
    try FileManager.default.copyItem(at: config, to: dest)
}

func formatDuration(_ seconds: Double) -> String {
    guard seconds.isFinite else { return "?" }
    let s = Int(seconds.rounded())
    return s >= 3600 ? String(format: "%dh%02dm", s / 3600, s % 3600 / 60) : String(format: "%dm%02ds", s / 60, s % 60)
}
