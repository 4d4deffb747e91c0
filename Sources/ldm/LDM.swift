import ArgumentParser
import TensorCore

struct LDM: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ldm",
        abstract: "Latent diffusion models (Rombach et al., CVPR 2022) on the CPU.",
        version: (["ldm (LatentDiffusion)"] + CPUFeatures.summary).joined(separator: "\n"),
        subcommands: [Txt2Img.self, Img2Img.self, Inpaint.self, Upscale.self, Semantic.self, Layout.self, Sample.self, Autoencode.self, Inspect.self, Convert.self, Train.self, Bench.self, SystemInfo.self, Serve.self])
}
