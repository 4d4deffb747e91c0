import ArgumentParser
import Autoencoders
import Foundation
import NeuralNetwork
import TensorCore
import UNetModels

/// `ldm bench vae` and `ldm bench unet`: full-model timings and peak memory against PyTorch. Each part runs in its
/// own child process (ours: this binary with --part; PyTorch's: tools/bench/torch_models.py) so that the peak RSS
/// reported is that part's alone.
struct BenchModels {
    static func run(parts: [(label: String, ours: String?, torch: String)], reps: Int, oursExtra: [String] = []) throws {
        let torchPython = ProcessInfo.processInfo.environment["LDM_TORCH_PYTHON"].flatMap { $0.isEmpty ? nil : $0 }
        if torchPython == nil { FileHandle.standardError.write("LDM_TORCH_PYTHON is not set: PyTorch figures are skipped.\n".data(using: .utf8)!) }
        BenchSupport.printHeader()
        print("| part | ours (s) | ours peak RSS (MB) | PyTorch (s) | PyTorch peak RSS (MB) | ours / PyTorch time | ours / PyTorch RSS |")
        print("|---|---|---|---|---|---|---|")
        let script = try torchPython.map { _ in try BenchSupport.script("torch_models.py") }
        for p in parts {
            let ours = try p.ours.map { try child(CommandLine.arguments[0], ["bench", "part", $0, "--reps", "\(reps)"] + oursExtra) }
            let torch = try torchPython.map { try child($0, [script!, "\(Parallel.threadCount)", p.torch, "\(reps)"]) }
            func f(_ v: Double?, _ fmt: String) -> String { v.map { String(format: fmt, $0) } ?? "n/a" }
            func ratio(_ a: Double?, _ b: Double?) -> String { (a != nil && b != nil) ? String(format: "%.2f", a! / b!) : "n/a" }
            print("| \(p.label) | \(f(ours?.0, "%.2f")) | \(f(ours?.1, "%.0f")) | \(f(torch?.0, "%.2f")) | \(f(torch?.1, "%.0f")) | \(ratio(ours?.0, torch?.0)) | \(ratio(ours?.1, torch?.1)) |")
        }
    }

    /// Runs a child that prints {"seconds": s, "peak_rss_mb": m}.
    static func child(_ exe: String, _ args: [String]) throws -> (Double, Double) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: exe)
        p.arguments = args
        let pipe = Pipe()
        p.standardOutput = pipe
        do { try p.run() } catch { throw BenchError("cannot run \(exe): \(error.localizedDescription)") }
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        guard p.terminationStatus == 0, let obj = try? JSONSerialization.jsonObject(with: data) as? [String: Double],
              let s = obj["seconds"], let m = obj["peak_rss_mb"] else {
            throw BenchError("benchmark child \(exe) \(args.joined(separator: " ")) failed (status \(p.terminationStatus))")
        }
        return (s, m)
    }
}

struct BenchVAE: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "vae", abstract: "SD VAE: decode 1x4x64x64 to 512x512, encode 512x512 (random weights).")
    @Option(help: "Repetitions per part (median).") var reps = 2
    func validate() throws { guard reps >= 1 else { throw ValidationError("--reps must be at least 1") } }
    func run() throws {
        try BenchModels.run(parts: [("SD VAE decode 64x64 -> 512x512 f32", "vae-decode", "vae-decode"),
                                    ("SD VAE encode 512x512 f32", "vae-encode", "vae-encode")], reps: reps)
    }
}

struct BenchUNet: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "unet", abstract: "SD-1.5 UNet, batch 2, 64x64x4 latent, 77x768 context (random weights).")
    @Option(help: "Repetitions per part (median).") var reps = 2
    @Flag(help: "Also time the bf16 UNet (ours and PyTorch's; both slow on CPUs without native bf16, where it is emulated).")
    var includeBF16 = false
    @Flag(name: .customLong("include-int8"), help: "Also time the int8 UNet (--precision int8: int8 weights and activations on AVX512_VNNI; conv_in/conv_out float32).")
    var includeInt8 = false
    func validate() throws { guard reps >= 1 else { throw ValidationError("--reps must be at least 1") } }
    func run() throws {
        var parts: [(label: String, ours: String?, torch: String)] = [("SD-1.5 UNet batch 2 f32", "unet-f32", "unet-f32")]
        if includeBF16 { parts.append(("SD-1.5 UNet batch 2 bf16", "unet-bf16", "unet-bf16")) }
        if includeInt8 {
            if let why = Int8Compute.unavailableReason { throw ValidationError("--include-int8: \(why)") }
            // PyTorch's column: its dynamic quantisation (Linear layers only; convolutions stay float32).
            parts.append(("SD-1.5 UNet batch 2 int8 (PyTorch: quantize_dynamic, Linear only)", "unet-int8", "unet-int8-dynamic"))
        }
        try BenchModels.run(parts: parts, reps: reps)
        print("bf16: \(BenchSupport.bf16Note)")
    }
}

/// The measured side of one part, run in a child process by BenchVAE/BenchUNet.
struct BenchPart: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "part", abstract: "Runs one benchmark part and prints JSON (used by bench vae/unet).", shouldDisplay: false)
    @Argument var part: String
    @Option var reps = 2
    @Option(name: .customLong("unet-config")) var unetConfig: String?
    func run() throws {
        if part.hasPrefix("sdxl-unet") {
            let (seconds, peak) = try GradMode.noGrad { try BenchSDXL.ours(part: part, config: unetConfig, reps: reps) }
            print("{\"seconds\": \(seconds), \"peak_rss_mb\": \(peak)}")
            return
        }
        let g = TorchGenerator(seed: 0)
        var seconds = 0.0
        try GradMode.noGrad {
            switch part {
            case "vae-decode":
                let vae = AutoencoderKL.randomStableDiffusion(seed: 0), z = Tensor.randn([1, 4, 64, 64], generator: g)
                seconds = BenchSupport.median(reps) { _ = try? vae.decode(z, tiled: .never) }
            case "vae-encode":
                let vae = AutoencoderKL.randomStableDiffusion(seed: 0), x = Tensor.randn([1, 3, 512, 512], generator: g)
                seconds = BenchSupport.median(reps) { _ = try? vae.encode(x, tiled: .never) }
            case "unet-f32", "unet-bf16":
                // bf16: under --precision bf16; the float32 weights' bf16 copies for oneDNN are made once and kept
                // (LDM_CONV_WEIGHT_CACHE_MB), as PyTorch's bf16 model holds its weights in bf16.
                let unet = try UNet2DConditionModel.random(config: .stableDiffusion15, seed: 0)
                let precision: ComputePrecision = part == "unet-bf16" ? .bf16 : .f32
                if precision == .bf16 && ProcessInfo.processInfo.environment["LDM_CONV_WEIGHT_CACHE_MB"] == nil { ConvWeightCache.maxCachedBytes = Int.max }
                // As PyTorch's side (unet.to(torch.bfloat16)): Linear/Conv2d weights held in bf16 only, where native.
                if precision.isNative && ProcessInfo.processInfo.environment["LDM_BENCH_F32_WEIGHTS"] == nil { unet.storeLowerPrecisionWeightsInBFloat16() }
                let x = Tensor.randn([2, 4, 64, 64], generator: g), c = Tensor.randn([2, 77, 768], generator: g)
                seconds = BenchSupport.median(reps) { precision.run { _ = try? unet(sample: x, timestep: 500, encoderHiddenStates: c) } }
            case "unet-int8":
                let unet = try UNet2DConditionModel.random(config: .stableDiffusion15, seed: 0)
                unet.quantizeToInt8(skipping: [ObjectIdentifier(unet.convIn), ObjectIdentifier(unet.convOut)])
                let x = Tensor.randn([2, 4, 64, 64], generator: g), c = Tensor.randn([2, 77, 768], generator: g)
                seconds = BenchSupport.median(reps) { _ = try? unet(sample: x, timestep: 500, encoderHiddenStates: c) }
            case "sd15-lcm4": seconds = try BenchLCM.ours(reps: reps)
            default: throw ValidationError("unknown benchmark part \(part)")
            }
        }
        if OpTimes.enabled { FileHandle.standardError.write(OpTimes.report(runs: reps).data(using: .utf8)!) }
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        print("{\"seconds\": \(seconds), \"peak_rss_mb\": \(Double(usage.ru_maxrss) / 1024)}")
    }
}
