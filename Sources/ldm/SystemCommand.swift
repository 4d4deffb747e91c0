import ArgumentParser
import TensorCore

/// `ldm system`: the CPU features detected at run time and the instruction sets the engine uses (LDM_ISA lowers them).
struct SystemInfo: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "system", abstract: "Print the CPU features detected and the instruction sets in use.")
    func run() throws {
        for line in CPUFeatures.summary { print(line) }
    }
}
