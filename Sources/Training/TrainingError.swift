// The error of the training layer: a configuration, data set, checkpoint or state it cannot use.

public struct TrainingError: Error, CustomStringConvertible {
    public let description: String
    public init(_ message: String) { description = message }
}
