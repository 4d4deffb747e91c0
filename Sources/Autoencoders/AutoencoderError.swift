// The error the first-stage models throw: a configuration they cannot build, an input of the wrong shape, weights
// that do not fit.

public struct AutoencoderError: Error, CustomStringConvertible, Equatable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
