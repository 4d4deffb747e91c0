// Matches CompVis LitEma (ldm/modules/ema.py): decay = min(decay, (1 + num_updates) / (10 + num_updates)),
// shadow -= (1 - decay) * (shadow - param), all in float32; shadows keyed by state_dict name.
import NeuralNetwork
import TensorCore

public final class LitEma {
    public let decay: Float
    /// CompVis `num_updates` (incremented before each update; -1 disables the warm-up rule).
    public private(set) var numUpdates: Int
    public let names: [String]
    public private(set) var shadow: [String: Tensor]

    public init(parameters: [(String, Tensor)], decay: Float = 0.9999, useNumUpdates: Bool = true) throws {
        guard (0...1).contains(decay) else { throw TrainingError("Decay must be between 0 and 1, got \(decay)") }
        self.decay = decay
        numUpdates = useNumUpdates ? 0 : -1
        names = parameters.map(\.0)
        shadow = Dictionary(parameters.map { ($0.0, $0.1.float32().contiguous().copied()) }, uniquingKeysWith: { a, _ in a })
    }

    public convenience init(module: Module, decay: Float = 0.9999) throws {
        try self.init(parameters: module.namedParameters, decay: decay)
    }

    /// LitEma.forward(model)
    public func update(_ parameters: [(String, Tensor)]) {
        var d = decay
        if numUpdates >= 0 {
            numUpdates += 1
            d = min(decay, Float(1 + numUpdates) / Float(10 + numUpdates))
        }
        let oneMinus = 1 - d
        for (name, p) in parameters {
            guard let s = shadow[name] else { continue }
            let src = p.float32().contiguous()
            withExtendedLifetime((s, src)) {
                let sp = s.data, pp = src.data
                for i in 0..<s.count { sp[i] -= oneMinus * (sp[i] - pp[i]) }
            }
        }
    }

    /// LitEma.copy_to(model)
    public func copy(to parameters: [(String, Tensor)]) {
        for (name, p) in parameters { if let s = shadow[name] { p.assign(s) } }
    }

    public func restore(shadow saved: [String: Tensor], numUpdates: Int) throws {
        var next: [String: Tensor] = [:]
        for name in names {
            guard let t = saved[name], let cur = shadow[name], t.shape == cur.shape else {
                throw TrainingError("EMA checkpoint lacks \(name) or has the wrong shape")
            }
            next[name] = t.float32().contiguous().copied()
        }
        shadow = next
        self.numUpdates = numUpdates
    }
}
