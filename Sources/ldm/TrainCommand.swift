// `ldm train ldm --config FILE.json [--resume RUN_DIR]`: trains a latent diffusion UNet (CompVis main.py with a
// LatentDiffusion config; keys in Training/TrainConfig.swift). Checkpoints, loss.jsonl and the exported unet/ go to
// the run directory. `ldm train autoencoder` (LPIPS + patch discriminator) is not implemented yet.
import ArgumentParser
import Foundation
import Training

struct Train: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "Train models.",
        subcommands: [TrainLDM.self])
}

struct TrainLDM: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ldm",
        abstract: "Train a latent diffusion UNet (noise / x0 / v prediction) on an image folder.",
        discussion: """
            The JSON config needs base_learning_rate, batch_size, max_steps, ckpt_every, data_dir, image_size and \
            one of unet (a diffusers unet folder or config.json) / unet_config (inline). Optional: first_stage \
            (a diffusers vae or vqvae folder; without it training runs in pixel space), conditioning (none | class: \
            class = sub-folder of data_dir), seed, ema_decay, use_ema, parameterization (eps | x0 | v), loss_type \
            (l1 | l2), cond_drop_prob, scale_by_std, scale_factor, timesteps, linear_start, linear_end, beta_schedule, \
            lr_scheduler (constant | constant_with_warmup | linear | cosine), lr_warmup_steps, scale_lr, \
            accumulate_grad_batches, weight_decay, adam_beta1, adam_beta2, adam_epsilon, max_grad_norm, run_dir.
            """)

    @Option(help: "JSON training config.")
    var config: String

    @Option(help: "Continue the run in RUN_DIR from its latest checkpoint.")
    var resume: String?

    @Option(help: "Run directory for a new run (default: the config's run_dir, else runs/<config name>).")
    var runDir: String?

    @Option(help: "Print the loss every N steps.")
    var logEvery = 10

    func validate() throws {
        guard logEvery > 0 else { throw ValidationError("--log-every must be positive") }
        guard resume == nil || runDir == nil else { throw ValidationError("give --resume RUN_DIR or --run-dir, not both") }
    }

    func run() throws {
        let configURL = URL(fileURLWithPath: config)
        let cfg = try LDMTrainConfig.load(configURL)
        let dir: URL
        if let resume {
            dir = URL(fileURLWithPath: resume)
        } else {
            dir = URL(fileURLWithPath: runDir ?? cfg.runDir ?? "runs/" + configURL.deletingPathExtension().lastPathComponent)
            if Trainer.latestCheckpoint(in: dir) != nil {
                throw TrainingError("\(dir.path) already holds checkpoints; pass --resume \(dir.path) to continue it")
            }
        }
        let trainer = try cfg.makeTrainer(runDir: dir)
        if resume != nil {
            try trainer.resume()
            print("resumed \(dir.path) at step \(trainer.step) (epoch \(trainer.epoch))")
        }
        try? FileManager.default.removeItem(at: dir.appendingPathComponent("config.json"))
        try FileManager.default.copyItem(at: configURL, to: dir.appendingPathComponent("config.json"))
        let every = logEvery, total = cfg.maxSteps
        trainer.onStep = { e in
            if e.step % every == 0 || e.step == total {
                print(String(format: "step %d/%d  epoch %d  loss %.5f  lr %.3g", e.step, total, e.epoch, e.loss, e.lr)
                      + (e.gradNorm.map { String(format: "  grad_norm %.4f", $0) } ?? ""))
            }
        }
        print("training \(trainer.model.parameterCount) parameters, lr \(trainer.optimizer.lr), \(trainer.sampler.dataset.count) images, run dir \(dir.path)")
        try trainer.train()
        print("done: step \(trainer.step); weights in \(dir.appendingPathComponent("unet").path)")
    }
}
