import ArgumentParser
import Autoencoders
import Diffusion
import Foundation
import NeuralNetwork
import TensorCore
import Training
import UNetModels

/// `ldm bench train`: training throughput of whole optimizer steps (Trainer.trainStep: batch, optional frozen
/// first-stage encode, DiffusionLoss forward, backward, clip_grad_norm_, AdamW) against the same diffusers model,
/// config dictionary and batch trained with torch.optim.AdamW in tools/bench/torch_train.py, each part in its own child
/// process (peak RSS is the part's own), with the same thread count.
struct BenchTrain: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "Training steps per second against diffusers + torch.optim.AdamW (random weights and data).",
        discussion: "Parts: \(TrainBenchPart.all.map { "\($0.name) (\($0.label))" }.joined(separator: "; ")).")

    @Option(help: "Timed steps per part (the median is reported).") var steps = 5
    @Option(help: "Untimed warm-up steps per part (the first allocates the AdamW moments).") var warmup = 2
    @Option(help: "Comma-separated part names (default: all).") var parts: String?

    func validate() throws {
        guard steps >= 1, warmup >= 0 else { throw ValidationError("--steps must be at least 1 and --warmup at least 0") }
        if let parts { _ = try TrainBenchPart.select(parts) }
    }

    func run() throws {
        let selected = try parts.map(TrainBenchPart.select) ?? TrainBenchPart.all
        let python = ProcessInfo.processInfo.environment["LDM_TORCH_PYTHON"].flatMap { $0.isEmpty ? nil : $0 }
        if python == nil { FileHandle.standardError.write("LDM_TORCH_PYTHON is not set: PyTorch figures are skipped.\n".data(using: .utf8)!) }
        let script = try python.map { _ in try BenchSupport.script(TrainBenchPart.torchScript) }
        BenchSupport.printHeader()
        print("threads: \(Parallel.threadCount) (PyTorch: torch.set_num_threads(\(Parallel.threadCount))); warm-up \(warmup) steps, median of \(steps)")
        print("| part | batch | ours step (s) | ours images/s | PyTorch step (s) | PyTorch images/s | ours / PyTorch throughput | ours peak RSS (MB) | PyTorch peak RSS (MB) |")
        print("|---|---|---|---|---|---|---|---|---|")
        for p in selected {
            let spec = try p.specJSON(steps: steps, warmup: warmup)
            let ours = try TrainBenchPart.child(CommandLine.arguments[0], ["bench", "train-part", spec])
            let torch = try python.map { try TrainBenchPart.child($0, [script!, "\(Parallel.threadCount)", spec]) }
            func f(_ v: Double?, _ fmt: String) -> String { v.map { String(format: fmt, $0) } ?? "n/a" }
            let b = Double(p.batch)
            let ratio = torch.map { String(format: "%.2fx", $0.seconds / ours.seconds) } ?? "n/a"
            print("| \(p.label) | \(p.batch) | \(f(ours.seconds, "%.3f")) | \(f(b / ours.seconds, "%.1f")) | \(f(torch?.seconds, "%.3f")) | \(f(torch.map { b / $0.seconds }, "%.1f")) | \(ratio) | \(f(ours.peakRSS, "%.0f")) | \(f(torch?.peakRSS, "%.0f")) |")
        }
        if python == nil { print("(PyTorch not measured: set LDM_TORCH_PYTHON)") }
    }
}

/// One training-throughput configuration; the same dictionaries configure our models and diffusers'.
struct TrainBenchPart {
    static let torchScript = "torch_train.py"

    let name: String
    let label: String
    let unet: [String: Any]
    let vae: [String: Any]?
    let batch: Int
    let latent: [Int]
    let image: [Int]
    let context: [Int]?
    let classes: Int?

    /// The shipped digits model: class-conditional UNet2DModel on 4x8x8 latents of the 32x32 digits autoencoder.
    static let digitsUNet: [String: Any] = [
        "_class_name": "UNet2DModel", "in_channels": 4, "out_channels": 4, "sample_size": 8,
        "block_out_channels": [64, 128], "layers_per_block": 2,
        "down_block_types": ["DownBlock2D", "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
        "attention_head_dim": 32, "norm_num_groups": 32, "num_class_embeds": 11,
    ]
    /// models/digits/training/autoencoder.json's model_config.
    static let digitsVAE: [String: Any] = [
        "_class_name": "AutoencoderKL", "in_channels": 3, "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
        "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
        "block_out_channels": [32, 64, 64], "layers_per_block": 1, "latent_channels": 4, "norm_num_groups": 32, "sample_size": 32,
    ]
    /// A small Stable-Diffusion-like text-conditioned UNet: cross-attention at both levels and in the mid block,
    /// heads of 32 channels at 32x32 and 64 at 16x16, context 77x256.
    static let sdLikeUNet: [String: Any] = [
        "_class_name": "UNet2DConditionModel", "in_channels": 4, "out_channels": 4, "sample_size": 32,
        "block_out_channels": [128, 256], "layers_per_block": 2,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"], "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        "attention_head_dim": 4, "cross_attention_dim": 256, "norm_num_groups": 32,
    ]

    static let all: [TrainBenchPart] = [
        TrainBenchPart(name: "digits", label: "digits UNet2DModel [64,128], class-cond, 4x8x8 latents", unet: digitsUNet, vae: nil,
                       batch: 64, latent: [4, 8, 8], image: [4, 8, 8], context: nil, classes: 10),
        TrainBenchPart(name: "digits-e2e", label: "digits end-to-end: + frozen AutoencoderKL [32,64,64] encode of 3x32x32",
                       unet: digitsUNet, vae: digitsVAE, batch: 64, latent: [4, 8, 8], image: [3, 32, 32], context: nil, classes: 10),
        TrainBenchPart(name: "sd-like", label: "SD-like UNet2DConditionModel [128,256], cross-attn, 4x32x32 latents, context 77x256",
                       unet: sdLikeUNet, vae: nil, batch: 8, latent: [4, 32, 32], image: [4, 32, 32], context: [77, 256], classes: nil),
    ]

    static func select(_ list: String) throws -> [TrainBenchPart] {
        try list.split(separator: ",").map { n in
            guard let p = all.first(where: { $0.name == n }) else {
                throw ValidationError("unknown part \(n): one of \(all.map(\.name).joined(separator: ", "))")
            }
            return p
        }
    }

    // Shared hyper-parameters (LDM defaults: scaled-linear betas 0.00085..0.012 over 1000 steps).
    static let lr = 1e-4, maxGradNorm: Float = 1, scaleFactor: Float = 0.18215
    static let betaStart = 0.00085, betaEnd = 0.012, timesteps = 1000

    /// Everything both sides need, as JSON (the PyTorch script's argument; ours re-reads it in the child).
    func specJSON(steps: Int, warmup: Int) throws -> String {
        var d: [String: Any] = [
            "name": name, "unet": unet, "batch": batch, "latent": latent, "image": image, "dataset": 2 * batch,
            "warmup": warmup, "steps": steps, "lr": Self.lr, "max_grad_norm": Double(Self.maxGradNorm),
            "scale_factor": Double(Self.scaleFactor), "beta_start": Self.betaStart, "beta_end": Self.betaEnd, "timesteps": Self.timesteps,
        ]
        if let vae { d["vae"] = vae } else { d["vae"] = NSNull() }
        if let context { d["context"] = context } else { d["context"] = NSNull() }
        if let classes { d["classes"] = classes } else { d["classes"] = NSNull() }
        return String(decoding: try JSONSerialization.data(withJSONObject: d, options: [.sortedKeys]), as: UTF8.self)
    }

    struct Result {
        var seconds: Double
        var peakRSS: Double
    }

    /// Runs a child that prints {"seconds": s, "peak_rss_mb": m, ...}.
    static func child(_ exe: String, _ args: [String]) throws -> Result {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: exe)
        p.arguments = args
        let pipe = Pipe()
        p.standardOutput = pipe
        do { try p.run() } catch { throw BenchError("cannot run \(exe): \(error.localizedDescription)") }
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        guard p.terminationStatus == 0, let obj = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
              let s = obj["seconds"] as? Double, let m = obj["peak_rss_mb"] as? Double else {
            throw BenchError("training benchmark child \(exe) \(args.dropLast().joined(separator: " ")) failed (status \(p.terminationStatus))")
        }
        return Result(seconds: s, peakRSS: m)
    }
}

/// The measured side of one `bench train` part, in its own process: a real Trainer (EMA off, no checkpoints within
/// the run) over an in-memory dataset; prints JSON.
struct BenchTrainPart: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "train-part", abstract: "Runs one training benchmark part and prints JSON (used by bench train).", shouldDisplay: false)
    @Argument var spec: String

    func run() throws {
        guard let d = try JSONSerialization.jsonObject(with: Data(spec.utf8)) as? [String: Any],
              let unetDict = d["unet"] as? [String: Any], let batch = d["batch"] as? Int, let image = d["image"] as? [Int],
              let n = d["dataset"] as? Int, let warmup = d["warmup"] as? Int, let steps = d["steps"] as? Int else {
            throw ValidationError("malformed training benchmark spec")
        }
        let g = TorchGenerator(seed: 0)
        let unet = try UNet2DConditionModel(config: UNetConfig.decode(JSONSerialization.data(withJSONObject: unetDict)))
        initializeParameters(unet, generator: g)
        var encoder = LatentEncoder.identity
        if let vaeDict = d["vae"] as? [String: Any] {
            let vae = try AutoencoderKL(config: JSONDecoder().decode(AutoencoderKLConfig.self, from: JSONSerialization.data(withJSONObject: vaeDict)))
            initializeParameters(vae, generator: g)
            encoder = .kl(vae)
        }
        let images = d["vae"] is NSNull ? Tensor.randn([n] + image, generator: g) : Tensor.rand([n] + image, generator: g) * 2 - 1
        let labels = try (d["classes"] as? Int).map { try g.randomInt(upperBound: Int64($0), count: n).map { Int($0) } }
        let dataset = try TensorDataset(images: images, labels: labels, classCount: d["classes"] as? Int)

        let schedule = try NoiseSchedule(schedule: .scaledLinear, trainSteps: TrainBenchPart.timesteps,
                                         betaStart: TrainBenchPart.betaStart, betaEnd: TrainBenchPart.betaEnd)
        var options = TrainerOptions(learningRate: TrainBenchPart.lr, batchSize: batch, maxSteps: Int(Int32.max),
                                     checkpointEvery: Int(Int32.max), seed: 0)
        options.emaDecay = nil
        options.maxGradNorm = TrainBenchPart.maxGradNorm
        options.scaleFactor = TrainBenchPart.scaleFactor
        let runDir = FileManager.default.temporaryDirectory.appendingPathComponent("ldm-bench-train-\(getpid())")
        defer { try? FileManager.default.removeItem(at: runDir) }
        let trainer = try Trainer(model: unet, loss: DiffusionLoss(schedule: schedule), encoder: encoder, dataset: dataset,
                                  options: options, runDir: runDir)
        if let ctx = d["context"] as? [Int] {
            let c = Tensor.randn([batch] + ctx, generator: g)
            trainer.makeConditioning = { _ in .text(c) }
        }
        var times: [Double] = []
        for i in 0..<(warmup + steps) {
            let t0 = BenchSupport.now()
            try trainer.trainStep()
            if i >= warmup { times.append(BenchSupport.now() - t0) }
        }
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        let out: [String: Any] = ["seconds": times.sorted()[times.count / 2], "times": times, "peak_rss_mb": Double(usage.ru_maxrss) / 1024]
        print(String(decoding: try JSONSerialization.data(withJSONObject: out, options: [.sortedKeys]), as: UTF8.self))
    }
}
