import TensorCore

// Layers expose their parameters as a flat list of (path, tensor), where the path is the PyTorch state_dict name
// of the reference module (diffusers naming), so loading, saving, optimizers and EMA all work from one list.

public protocol Module: AnyObject {
    /// (state_dict name, tensor) for every parameter and buffer, in a stable order.
    var namedParameters: [(String, Tensor)] { get }
}

extension Module {
    public var parameters: [Tensor] { namedParameters.map(\.1) }
    public var parameterCount: Int { namedParameters.reduce(0) { $0 + $1.1.count } }

    /// Joins a child's names under `prefix`.
    public func scoped(_ prefix: String, _ child: Module?) -> [(String, Tensor)] {
        child?.namedParameters.map { ("\(prefix).\($0.0)", $0.1) } ?? []
    }
    public func scoped(_ prefix: String, _ children: [Module]) -> [(String, Tensor)] {
        children.enumerated().flatMap { scoped("\(prefix).\($0.offset)", $0.element) }
    }
}
