// The error of the noise schedules and schedulers (diffusers schedulers/*: their ValueError / NotImplementedError cases).
public enum DiffusionError: Error, CustomStringConvertible, Equatable {
    case unsupported(String)
    case invalidConfig(String)
    case invalidArgument(String)
    case unknownSampler(String, valid: [String])

    public var description: String {
        switch self {
        case let .unsupported(s): return "Unsupported: \(s)"
        case let .invalidConfig(s): return "Invalid scheduler config: \(s)"
        case let .invalidArgument(s): return "Invalid argument: \(s)"
        case let .unknownSampler(n, valid): return "Unknown sampler '\(n)'. Valid names: \(valid.joined(separator: ", "))"
        }
    }
}
