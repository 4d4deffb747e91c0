// `ldm bench sdxl`: the SDXL base UNet at real size (random weights), one call of batch 2 (classifier-free guidance)
// on a 128x128 latent (1024x1024 images) and a 64x64 latent (SDXL-Turbo's 512x512), float32, and at 128x128 with the
// weights held in bf16 (`storeLowerPrecisionWeightsInBFloat16`, bf16 compute) for the memory figure, against diffusers
// doing the same in the same run (tools/bench/torch_models.py parts sdxl-*). The architecture is diffusers' own: the
// PyTorch side prints the SDXL base unet/config.json (part sdxl-config) and our side decodes it into UNetConfig.
// Peak RSS here is the peak during the UNet calls (VmHWM reset once the model is built and converted), on both sides.
import ArgumentParser
import Foundation
import NeuralNetwork
import TensorCore
import UNetModels

struct BenchSDXL: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "sdxl", abstract: "SDXL base UNet (random weights, diffusers' config), batch 2 at 128x128 and 64x64 latents, f32 and bf16 weights, against diffusers.")
    @Option(help: "Repetitions per part (median, after one warm-up call).") var reps = 1
    @Option(help: "The parts to run, comma-separated (default all): 128, 64, 128-bf16.") var parts = "128,64,128-bf16"
    func validate() throws {
        guard reps >= 1 else { throw ValidationError("--reps must be at least 1") }
        let names = parts.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
        guard !names.isEmpty, names.allSatisfy(["128", "64", "128-bf16"].contains) else {
            throw ValidationError("--parts takes 128, 64 and 128-bf16 (comma-separated), got '\(parts)'")
        }
    }

    func run() throws {
        guard let python = ProcessInfo.processInfo.environment["LDM_TORCH_PYTHON"], !python.isEmpty else {
            throw BenchError("bench sdxl needs LDM_TORCH_PYTHON (a python with torch and diffusers): diffusers writes the SDXL UNet config it times")
        }
        let script = try BenchSupport.script("torch_models.py")
        let p = Process()
        p.executableURL = URL(fileURLWithPath: python)
        p.arguments = [script, "1", "sdxl-config", "0"]
        let out = Pipe()
        p.standardOutput = out
        do { try p.run() } catch { throw BenchError("cannot run LDM_TORCH_PYTHON=\(python): \(error.localizedDescription)") }
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else { throw BenchError("\(script) sdxl-config failed with status \(p.terminationStatus)") }
        _ = try UNetConfig.decode(data)  // fail here, not in a child, if our side cannot build it
        let config = FileManager.default.temporaryDirectory.appendingPathComponent("ldm-bench-sdxl-unet-\(getpid()).json")
        try data.write(to: config)
        defer { try? FileManager.default.removeItem(at: config) }
        let labels = ["128": "SDXL UNet batch 2, 128x128 latent (1024 px), f32", "64": "SDXL UNet batch 2, 64x64 latent (512 px), f32",
                      "128-bf16": "SDXL UNet batch 2, 128x128 latent, bf16 weights"]
        let chosen = parts.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
        let list: [(label: String, ours: String?, torch: String)] = ["128", "64", "128-bf16"].filter(chosen.contains).map {
            (labels[$0] ?? $0, "sdxl-unet-\($0)", "sdxl-unet-\($0)")
        }
        try BenchModels.run(parts: list, reps: reps, oursExtra: ["--unet-config", config.path])
        print("peak RSS: during the UNet calls, after the model is built (and converted to bf16). bf16: \(BenchSupport.bf16Note)")
    }

    /// The measured side of parts sdxl-unet-* (run by `bench part --unet-config`): (seconds, peak RSS MB during the calls).
    static func ours(part: String, config: String?, reps: Int) throws -> (Double, Double) {
        guard let config else { throw ValidationError("part \(part) needs --unet-config") }
        let unet = try UNet2DConditionModel.random(config: UNetConfig.decode(Data(contentsOf: URL(fileURLWithPath: config))), seed: 0)
        let bf16 = part.hasSuffix("bf16")
        let precision: ComputePrecision = bf16 ? .bf16 : .f32
        if bf16 {
            if ProcessInfo.processInfo.environment["LDM_CONV_WEIGHT_CACHE_MB"] == nil { ConvWeightCache.maxCachedBytes = Int.max }
            _ = unet.storeLowerPrecisionWeightsInBFloat16()
        }
        let n = part.contains("-128") ? 128 : 64
        let g = TorchGenerator(seed: 0)
        let x = Tensor.randn([2, 4, n, n], generator: g), c = Tensor.randn([2, 77, 2048], generator: g)
        let side = Float(8 * n)
        let added = AddedConditions(textEmbeds: Tensor.randn([2, 1280], generator: g),
                                    timeIds: Tensor([side, side, 0, 0, side, side, side, side, 0, 0, side, side], shape: [2, 6]))
        try? "5".write(toFile: "/proc/self/clear_refs", atomically: false, encoding: .utf8)
        var failure: Error?
        let seconds = BenchSupport.median(reps) {
            do { try precision.run { _ = try unet(sample: x, timestep: 500, encoderHiddenStates: c, addedCond: added) } } catch { failure = error }
        }
        if let failure { throw failure }
        return (seconds, peakRSSSinceReset())
    }

    /// VmHWM of /proc/self/status in MB (ru_maxrss where it cannot be read).
    static func peakRSSSinceReset() -> Double {
        if let s = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
           let line = s.split(separator: "\n").first(where: { $0.hasPrefix("VmHWM:") }),
           let kb = Double(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "") {
            return kb / 1024
        }
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        return Double(usage.ru_maxrss) / 1024
    }
}
