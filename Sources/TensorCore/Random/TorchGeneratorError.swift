// The error of the torch-compatible generators (a CPUGeneratorImplState that does not fit, a bad range).
public enum TorchGeneratorError: Error, CustomStringConvertible {
    case invalidStateSize(expected: Int, found: Int)
    case invalidEngineState(String)
    case invalidRange(String)

    public var description: String {
        switch self {
        case let .invalidStateSize(expected, found):
            return "TorchGenerator state must be \(expected) bytes (torch CPUGeneratorImplState), found \(found)"
        case let .invalidEngineState(why): return "Invalid mt19937 state: \(why)"
        case let .invalidRange(why): return "Invalid random range: \(why)"
        }
    }
}
