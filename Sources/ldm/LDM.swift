import ArgumentParser

struct LDM: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ldm",
        abstract: "Latent diffusion models (Rombach et al., CVPR 2022) on the CPU.",
        subcommands: [Autoencode.self, Inspect.self, Convert.self, Train.self, Bench.self])
}
