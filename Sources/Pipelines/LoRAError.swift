// The error of LoRA files and merging (LoRA.swift, LoRAMerge.swift): a file, a key or a shape that does not fit
// the model, in one sentence naming it.

public struct LoRAError: Error, CustomStringConvertible, Equatable {
    public let description: String

    public init(_ message: String) {
        description = message
    }
}
