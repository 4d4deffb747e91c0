import ArgumentParser
import Foundation
import TensorCore

/// `ldm bench core`: times the tensor engine's key kernels and, when LDM_TORCH_PYTHON names a Python with torch,
/// PyTorch's on the same shapes and thread count in the same run, and prints the ratios.
struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Benchmarks against PyTorch (set LDM_TORCH_PYTHON=/path/to/python with torch installed).",
        subcommands: [BenchCore.self, BenchVAE.self, BenchUNet.self, BenchLCM.self, BenchSDXL.self, BenchTrain.self, BenchPart.self, BenchTrainPart.self])
}

struct BenchCore: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "core", abstract: "matmul, conv, attention, group norm + SiLU.")

    static let groups = ["matmul", "conv", "convs", "attention", "norm"]
    @Option(help: "Repetitions per op (median is reported).") var reps = 5
    @Option(help: "Comma-separated op groups: matmul, conv, convs (the SD UNet's and VAE's 3x3 shapes, Winograd and oneDNN direct), attention, norm (default: all).")
    var ops = "matmul,conv,convs,attention,norm"

    func validate() throws {
        guard reps >= 1 else { throw ValidationError("--reps must be at least 1") }
        for op in selected where !Self.groups.contains(op) {
            throw ValidationError("--ops: unknown group '\(op)' (known: \(Self.groups.joined(separator: ", ")))")
        }
    }
    var selected: [String] { ops.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) } }

    /// 3x3 padding-1 convolutions of the SD-1.5 UNet at batch 2 (64x64 latent) and of the SD VAE decoder.
    static let convShapes: [(n: Int, c: Int, size: Int)] = [(2, 320, 64), (2, 640, 32), (2, 1280, 16), (2, 1280, 8), (1, 128, 256), (1, 512, 64)]

    func run() throws {
        let want = Set(selected)
        let torch = try BenchSupport.torchFigures(script: "torch_core.py", arguments: [selected.joined(separator: ",")])
        let g = TorchGenerator(seed: 0)
        var rows: [BenchSupport.Row] = []
        GradMode.noGrad {
          if want.contains("matmul") {
            let a = Tensor.randn([2048, 2048], generator: g), b = Tensor.randn([2048, 2048], generator: g)
            let t = BenchSupport.median(reps) { _ = matmul(a, b) }
            rows.append(.init(op: "matmul 2048^2 f32", ours: t, torch: torch["matmul_f32"], work: 2 * pow(2048, 3), unit: "GFLOP/s"))
            // Ours in bf16: a linear layer (a @ w^T, w = b^T) through oneDNN's bf16 matmul where the CPU has native bf16.
            let bt = b.transposed().contiguous()
            let tb = NativeBF16.available ? BenchSupport.median(reps) { NativeBF16.scope { _ = linear(a, bt) } } : nil
            rows.append(.init(op: "matmul 2048^2 bf16", ours: tb, torch: torch["matmul_bf16"], work: 2 * pow(2048, 3), unit: "GFLOP/s",
                              note: BenchSupport.bf16Note))
          }
          if want.contains("conv") {
            let x = Tensor.randn([1, 320, 64, 64], generator: g), w = Tensor.randn([320, 320, 3, 3], generator: g) * 0.02
            let bias = Tensor.randn([320], generator: g)
            let tc = BenchSupport.median(reps) { _ = conv2d(x, w, bias, Conv2dOptions(padding: 1)) }
            let convFlops = 2.0 * 320 * 320 * 9 * 64 * 64
            rows.append(.init(op: "conv3x3 320->320 64x64 f32", ours: tc, torch: torch["conv_f32"], work: convFlops, unit: "GFLOP/s"))
            let tcb = NativeBF16.available
                ? Winograd.withDisabled { BenchSupport.median(reps) { NativeBF16.scope { _ = conv2d(x, w, bias, Conv2dOptions(padding: 1)) } } } : nil
            rows.append(.init(op: "conv3x3 320->320 64x64 bf16", ours: tcb, torch: torch["conv_bf16"], work: convFlops, unit: "GFLOP/s",
                              note: BenchSupport.bf16Note + " (oneDNN direct)"))
          }
          if want.contains("convs") {
            for (n, c, size) in Self.convShapes {
                let x = Tensor.randn([n, c, size, size], generator: g), w = Tensor.randn([c, c, 3, 3], generator: g) * 0.02
                let bias = Tensor.randn([c], generator: g)
                let flops = 2.0 * Double(n * c * c * 9 * size * size)
                let name = "conv3x3 \(n)x\(c)x\(size)x\(size)"
                let direct = Winograd.withDisabled { BenchSupport.median(reps) { _ = conv2d(x, w, bias, Conv2dOptions(padding: 1)) } }
                let tw = BenchSupport.median(reps) { _ = conv2d(x, w, bias, Conv2dOptions(padding: 1)) }
                let uses = Winograd.appliesForInference(n: n, ic: c, oc: c, kh: 3, kw: 3, oh: size, ow: size, Conv2dOptions(padding: 1))
                let fused = Winograd.fusesTransform(n: n, ic: c, oc: c, oh: size, ow: size)
                rows.append(.init(op: name, ours: tw, torch: torch["conv_\(n)x\(c)x\(size)"], work: flops, unit: "GFLOP/s",
                                  note: !uses ? "oneDNN direct (too few tiles for Winograd)" : fused ? "Winograd F(4x4,3x3), transform fused into the GEMMs" : "Winograd F(4x4,3x3)"))
                rows.append(.init(op: name + " oneDNN direct", ours: direct, torch: torch["conv_\(n)x\(c)x\(size)"], work: flops, unit: "GFLOP/s"))
                if NativeBF16.available {
                    let tb = Winograd.withDisabled { BenchSupport.median(reps) { NativeBF16.scope { _ = conv2d(x, w, bias, Conv2dOptions(padding: 1)) } } }
                    rows.append(.init(op: name + " oneDNN direct bf16", ours: tb, torch: nil, work: flops, unit: "GFLOP/s", note: BenchSupport.bf16Note))
                }
            }
          }
          if want.contains("attention") {
            for (heads, d) in [(8, 40), (1, 512)] {
                let q = Tensor.randn([1, heads, 4096, d], generator: g), k = Tensor.randn([1, heads, 4096, d], generator: g)
                let v = Tensor.randn([1, heads, 4096, d], generator: g)
                let ta = BenchSupport.median(max(1, reps / 2)) { _ = scaledDotProductAttention(q, k, v) }
                let flops = 4.0 * Double(heads) * 4096 * 4096 * Double(d)
                rows.append(.init(op: "attention 4096 tok, \(heads)x\(d)", ours: ta, torch: torch["attention_\(heads)x\(d)"], work: flops, unit: "GFLOP/s",
                                  note: "extra memory: \(BenchSupport.attentionScratchKB(heads: heads)) KB tiles + 16 KB log-sum-exp per head (linear in tokens)"))
            }
          }
          if want.contains("norm") {
            let xn = Tensor.randn([1, 320, 64, 64], generator: g), gw = Tensor.randn([320], generator: g), gb = Tensor.randn([320], generator: g)
            let bytes = Double(xn.count * 4 * 2)
            let tn = BenchSupport.median(reps * 4) { _ = xn.groupNorm(groups: 32, weight: gw, bias: gb, eps: 1e-6, silu: true) }
            let tcopy = BenchSupport.median(reps * 4) { _ = (xn.permuted([0, 1, 3, 2]).contiguous()) }
            let tmem = BenchSupport.median(reps * 4) {
                let o = Tensor.empty(xn.shape)
                withExtendedLifetime(xn) { o.data.update(from: xn.data, count: xn.count) }
            }
            rows.append(.init(op: "group norm + SiLU 1x320x64x64", ours: tn, torch: torch["groupnorm_silu"], work: bytes, unit: "GB/s",
                              note: String(format: "%.0f%% of plain-copy bandwidth (%.1f GB/s)", 100 * tmem / tn, bytes / tmem / 1e9)))
            rows.append(.init(op: "copy 1x320x64x64 (memcpy)", ours: tmem, torch: torch["copy"], work: bytes, unit: "GB/s"))
            rows.append(.init(op: "transpose-copy 1x320x64x64", ours: tcopy, torch: nil, work: bytes, unit: "GB/s"))
          }
        }
        BenchSupport.printTable(rows, torchAvailable: !torch.isEmpty)
    }
}
