// The error of the conditioning models (text encoders, class embedder, spatial rescaler): configs and weights they refuse.
public struct ConditioningError: Error, CustomStringConvertible {
    public let description: String
    public init(_ message: String) { description = message }
}
