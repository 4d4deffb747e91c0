// `ldm train ldm --config FILE.json [--resume RUN_DIR [--export-only]]`: trains a latent diffusion UNet (CompVis
// main.py with a LatentDiffusion config; keys in Training/TrainConfig.swift), optionally with its text encoder
// (cond_stage_trainable). Checkpoints, loss.jsonl, the exported unet/ and a diffusers pipeline folder pipeline/
// (Training/PipelineExport.swift) go to the run directory; with sample_every, a DDIM sample grid of the EMA UNet goes
// to samples/step-N.png (CompVis ImageLogger / LatentDiffusion.log_images with ddim_steps, diffusers examples'
// log_validation).
// Under Open MPI's mpirun both train commands run data-parallel (Training/DataParallel.swift, docs/training.md).
import ArgumentParser
import Autoencoders
import Diffusion
import Foundation
import Imaging
import Pipelines
import TensorCore
import Training
import UNetModels

struct Train: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "Train models.",
        subcommands: [TrainLDM.self, TrainAutoencoder.self, TrainLoRA.self])
}

struct TrainLDM: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ldm",
        abstract: "Train a latent diffusion UNet (noise / x0 / v prediction) on an image folder.",
        discussion: """
            The JSON config needs base_learning_rate, batch_size, max_steps, ckpt_every, data_dir, image_size and \
            one of unet (a diffusers unet folder or config.json) / unet_config (inline). Optional: first_stage \
            (a diffusers vae or vqvae folder; without it training runs in pixel space), conditioning (none | class: \
            class = sub-folder of data_dir | text: captions = .txt beside each image, with text_encoder (a CLIPTextModel \
            folder) or text_encoder_config (an inline CLIPTextConfig, trained from scratch), tokenizer (a CLIP tokenizer \
            folder, or "openai-clip" for the shipped CLIP vocabulary) and cond_stage_trainable (train the text encoder \
            with the UNet)), export_dtype (float32 | bfloat16 | float16: the exported weights), seed, ema_decay, use_ema, parameterization (eps | x0 | v), loss_type \
            (l1 | l2), cond_drop_prob, scale_by_std, scale_factor, timesteps, linear_start, linear_end, beta_schedule, \
            lr_scheduler (constant | constant_with_warmup | linear | cosine), lr_warmup_steps, scale_lr, \
            accumulate_grad_batches, weight_decay, adam_beta1, adam_beta2, adam_epsilon, max_grad_norm, run_dir, \
            sample_every (steps between 2x2 DDIM sample grids in RUN_DIR/samples), sample_steps (DDIM steps, default 20), \
            prefetch (default true: the next batch is decoded and augmented on a background thread during each step; \
            false loads it synchronously, with the same batches), cache_latents (default false: true encodes every \
            image once through the frozen first stage and keeps its outputs in RUN_DIR/latent_cache.safetensors: \
            AutoencoderKL posterior mean and logvar, sampled anew every step, or VQ latents; rebuilt when the images or \
            the first stage change. Needs first_stage and random_crop false; with random_flip both flips are cached), \
            precision ("32-true", default, or "bf16-mixed": Lightning's bf16 mixed precision, torch CPU autocast \
            semantics: conv / linear inputs, weights and outputs rounded to bfloat16, float32 master weights, optimizer \
            state and EMA; this CPU computes the bf16 products in float32, so it is no faster) or mixed_precision \
            ("no" | "bf16", accelerate's name for the same).
            """)

    @OptionGroup var runOptions: TrainRunOptions

    @Flag(help: "With --resume: write RUN_DIR/unet and RUN_DIR/pipeline from the latest checkpoint without training.")
    var exportOnly = false

    func validate() throws {
        guard !exportOnly || runOptions.resume != nil else { throw ValidationError("--export-only needs --resume RUN_DIR") }
    }

    func run() throws { try runOptions.dataParallel(train) }

    func train(_ comm: Communicator) throws {
        let print = comm.isRoot ? { Swift.print($0) } : { (_: String) in }
        let configURL = URL(fileURLWithPath: runOptions.config)
        let cfg = try LDMTrainConfig.load(configURL)
        let dir = try runOptions.directory(configRunDir: cfg.runDir)
        let trainer = try cfg.makeTrainer(runDir: dir, communicator: comm, log: print)
        runOptions.configure(trainer.gradients)
        if runOptions.resume != nil {
            try trainer.resume()
            print("resumed \(dir.path) at step \(trainer.step) (epoch \(trainer.epoch))")
        }
        if exportOnly {
            if comm.isRoot { try trainer.exportWeights() }
            print("exported step \(trainer.step): \(exportedPaths(trainer))")
            return
        }
        if comm.isRoot { try copyConfig(configURL, into: dir) }
        if cfg.sampleEvery != nil && comm.isRoot { trainer.sampleCallback = try makeSampleGridCallback(config: cfg, trainer: trainer) }
        let every = runOptions.logEvery, total = cfg.maxSteps
        trainer.onStep = stepLog(every: every, total: total, print: print)
        print("training \(trainer.model.parameterCount) parameters, lr \(trainer.optimizer.lr), \(trainer.sampler.dataset.count) images, precision \(cfg.precision.rawValue), run dir \(dir.path)"
              + dataParallelSummary(comm, trainer.shard))
        let start = Date(), firstStep = trainer.step
        try trainer.train()
        let reduce = allReduceSummary(trainer.gradients, steps: trainer.step - firstStep, seconds: Date().timeIntervalSince(start))
        if !reduce.isEmpty { print(reduce) }
        print(String(format: "data: %.2f s waiting for batches", trainer.loader.waitSeconds) + " (prefetch \(trainer.loader.prefetch ? "on" : "off"))")
        print("done: step \(trainer.step); \(exportedPaths(trainer))")
    }

    func exportedPaths(_ trainer: Trainer) -> String {
        "weights in \(trainer.runDir.appendingPathComponent("unet").path)"
            + (trainer.pipelineExport != nil ? ", pipeline in \(trainer.pipelineURL.path)"
                                             : " (no pipeline/: a pixel-space text model has no diffusers pipeline)")
    }
}

/// Number of images in a training sample grid (2 x 2).
let trainSampleCount = 4

/// The Trainer's sample callback: `trainSampleCount` images from the same initial noise (seed = the config's seed)
/// denoised by DDIM (the training schedule, `sample_steps` steps, eta 0) with the UNet the Trainer passes (its EMA
/// weights), decoded through the training first stage after dividing by the training scale factor (pixel space:
/// the samples are the images). Class-conditional: classes 0, 1, ... cycling; text: the first captions of the data,
/// encoded by the trainer's text encoder (again at every grid when it is being trained).
func makeSampleGridCallback(config cfg: LDMTrainConfig, trainer: Trainer) throws -> (UNet2DConditionModel, Int) throws -> RGBImage {
    let schedulerConfig = try cfg.samplingSchedulerConfig()
    _ = try DDIMScheduler(config: schedulerConfig)   // fail before training when the schedule does not convert
    let count = trainSampleCount, dataset = trainer.sampler.dataset
    var labels: [Int]?, context: Tensor?, prompts: [String] = []
    switch cfg.conditioning {
    case .none: break
    case .class:
        guard let n = dataset.classCount, n > 0 else { throw TrainingError("sample grid: the data has no classes") }
        labels = (0..<count).map { $0 % n }
    case .text:
        guard let text = trainer.textConditioner else { throw TrainingError("sample grid: the trainer has no text encoder") }
        let g = TorchGenerator(seed: cfg.seed)
        let captions = try (0..<min(count, dataset.count)).map { try dataset.example(at: $0, generator: g).caption ?? "" }
        guard !captions.isEmpty else { throw TrainingError("sample grid: the data set is empty") }
        prompts = (0..<count).map { captions[$0 % captions.count] }
        if !text.trainable { context = try GradMode.noGrad { try text.encode(prompts) } }
    }
    let down: Int
    let firstStage: FirstStageModel?
    switch trainer.encoder {
    case .identity:
        down = 1
        firstStage = nil
    case .kl(let m):
        down = m.downsamplingFactor
        firstStage = .kl(m)
    case .vq(let m):
        down = m.downsamplingFactor
        firstStage = .vq(m)
    }
    let shape = [count, trainer.model.config.inChannels, cfg.imageSize / down, cfg.imageSize / down]
    return { [unowned trainer] unet, _ in
        let run = try GenerationRun(SamplingOptions(sampler: "ddim", steps: cfg.sampleSteps, eta: 0), schedulerConfig: schedulerConfig,
                                    generator: TorchGenerator(seed: cfg.seed))
        var context = context
        if context == nil, let text = trainer.textConditioner, !prompts.isEmpty { context = try GradMode.noGrad { try text.encode(prompts) } }
        let denoiser = Denoiser(unet: unet, context: context, classLabels: labels)
        let z = try run.latents(.noise(shape: shape), denoiser)
        let scale = trainer.scaleFactor ?? 1
        let unscaled = z.toArray().map { $0 / scale }
        let images: [RGBImage]
        if let firstStage {
            images = try decodeLatents(unscaled, shape: shape, firstStage: firstStage, scaled: false).images
        } else {
            let n = unscaled.count / count
            images = try (0..<count).map { i in
                try VaeImageProcessor.toImage(Array(unscaled[(i * n)..<((i + 1) * n)]), height: shape[2], width: shape[3])
            }
        }
        return try imageGrid(images, rows: 2)
    }
}
