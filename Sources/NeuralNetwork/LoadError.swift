// The error of strict state-dict loading: the weights do not match the module (the report lists missing and
// mis-shaped tensors).

public struct LoadError: Error, CustomStringConvertible {
    public let report: LoadReport
    public let component: String
    public var description: String { "cannot load \(component): weights do not match the model\n\(report)" }
}
