// `ldm train lora --config FILE.json [--resume RUN_DIR]`: fine-tunes a rank-r LoRA on a base model (kohya-ss
// sd-scripts train_network.py; keys in Training/LoRATrainConfig.swift) and writes it as a kohya-format safetensors file
// (lora_unet_*.lora_down.weight / lora_up.weight / alpha, ss_* metadata) that `--lora` and diffusers'
// load_lora_weights read. Checkpoints and loss.jsonl go to the run directory as for `ldm train ldm`.
import ArgumentParser
import Foundation
import Pipelines
import TensorCore
import Training

struct TrainLoRA: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lora",
        abstract: "Train a LoRA (low-rank adapters on the UNet's attention, optionally the text encoder) on captioned images.",
        discussion: """
            The JSON config needs base_model (a diffusers pipeline folder or a single-file checkpoint, e.g. \
            models/shapes), data_dir (images with a caption .txt beside each) and max_steps. Optional: rank (default 4), \
            alpha (default: the rank; the update is scaled by alpha / rank), learning_rate (1e-4), batch_size (1), \
            gradient_accumulation_steps, seed (0), resolution (default: the model's image size), targets (a list of \
            attention | projections | feed_forward; default ["attention"]: to_q, to_k, to_v, to_out.0), \
            train_text_encoder (false: also adapt the CLIP text encoder's q/k/v/out_proj and fc1/fc2), output (the \
            .safetensors file; default RUN_DIR/<output_name>.safetensors), output_name (default: the config's name), \
            run_dir, save_every (steps between resumable checkpoints), save_dtype (float32 | float16 | bfloat16), \
            precision ("32-true" | "bf16-mixed") or mixed_precision ("no" | "bf16"), lr_scheduler, lr_warmup_steps, \
            max_grad_norm (1; null: off), weight_decay (0.01), adam_beta1, adam_beta2, adam_epsilon, cond_drop_prob, \
            random_crop, random_flip (both false), cache_latents, prefetch. The base model's weights stay frozen; the \
            loss is the LDM trainer's with the base scheduler's noise schedule and prediction_type.
            """)

    @OptionGroup var runOptions: TrainRunOptions

    func run() throws { try runOptions.dataParallel(train) }

    func train(_ comm: Communicator) throws {
        let print = comm.isRoot ? { Swift.print($0) } : { (_: String) in }
        let configURL = URL(fileURLWithPath: runOptions.config)
        let cfg = try LoRATrainConfig.load(configURL)
        let dir = try runOptions.directory(configRunDir: cfg.runDir)
        let output = cfg.outputURL(runDir: dir)
        if runOptions.resume == nil, FileManager.default.fileExists(atPath: output.path) {
            throw TrainingError("\(output.path) already exists; remove it or choose another output / output_name")
        }
        let bundle = try ModelBundle.load(URL(fileURLWithPath: cfg.baseModel))
        guard bundle.textEncoder2 == nil, bundle.bert == nil, let textEncoder = bundle.textEncoder, let tokenizer = bundle.tokenizer else {
            throw TrainingError("\(cfg.baseModel): LoRA training needs a model with one CLIP text encoder and its tokenizer (SD 1.x / 2.x style)")
        }
        let base = LoRABaseModel(unet: bundle.unet, firstStage: bundle.firstStage, textEncoder: textEncoder, tokenizer: tokenizer,
                                 schedulerConfig: bundle.schedulerConfig, defaultImageSize: bundle.defaultImageSize,
                                 name: URL(fileURLWithPath: cfg.baseModel).lastPathComponent)
        let run = try cfg.makeTrainer(base: base, runDir: dir, communicator: comm, log: print)
        let trainer = run.trainer
        runOptions.configure(trainer.gradients)
        if runOptions.resume != nil {
            try trainer.resume()
            print("resumed \(dir.path) at step \(trainer.step) (epoch \(trainer.epoch))")
        }
        if comm.isRoot { try copyConfig(configURL, into: dir) }
        let every = runOptions.logEvery, total = cfg.maxSteps
        trainer.onStep = stepLog(every: every, total: total, print: print)
        print("training a rank-\(cfg.rank) LoRA (alpha \(cfg.effectiveAlpha)): \(run.network.adapters.count) modules, "
              + "\(run.network.parameterCount) parameters; base \(cfg.baseModel) frozen; \(trainer.sampler.dataset.count) images at \(run.resolution)px, "
              + "precision \(cfg.precision.rawValue), run dir \(dir.path)" + dataParallelSummary(comm, trainer.shard))
        let start = Date(), firstStep = trainer.step
        try trainer.train()
        let reduce = allReduceSummary(trainer.gradients, steps: trainer.step - firstStep, seconds: Date().timeIntervalSince(start))
        if !reduce.isEmpty { print(reduce) }
        print(String(format: "done: step %d in %.1f s; ", trainer.step, Date().timeIntervalSince(start)) + "LoRA in \(output.path)")
    }
}
