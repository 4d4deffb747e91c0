// The training precision: float32, or bf16 mixed precision (Lightning's Trainer(precision="bf16-mixed"), accelerate's
// mixed_precision="bf16"; torch.autocast("cpu", dtype=torch.bfloat16) around the forward and the loss, float32 master
// weights, optimizer state and EMA). What the bf16 scope changes: NeuralNetwork/Autocast.swift.
import Foundation
import NeuralNetwork
import TensorCore

public enum TrainingPrecision: String, Sendable {
    case float32 = "32-true"
    case bf16Mixed = "bf16-mixed"

    /// Lightning's `precision` values ("32-true", "32", 32, "bf16-mixed") and accelerate's `mixed_precision`
    /// ("no", "bf16"). Anything else (fp16 / 16-mixed, bf16-true, 64, ...) is refused with the supported list.
    public static func parse(_ value: String, key: String) throws -> TrainingPrecision {
        let supported = key == "mixed_precision" ? "\"no\" or \"bf16\"" : "\"32-true\" (also \"32\") or \"bf16-mixed\""
        let map: [String: TrainingPrecision] = key == "mixed_precision"
            ? ["no": .float32, "bf16": .bf16Mixed]
            : ["32-true": .float32, "32": .float32, "bf16-mixed": .bf16Mixed]
        guard let p = map[value] else {
            let why: String
            switch value {
            case "16-mixed", "16", "fp16", "16-true": why = " (float16 mixed precision needs loss scaling and is not implemented; use bf16)"
            case "bf16" where key == "precision": why = " (\"bf16\" is accelerate's mixed_precision value; Lightning's name is \"bf16-mixed\")"
            case "bf16-true": why = " (bf16-true keeps bf16 weights; only bf16-mixed, with float32 master weights, is implemented)"
            default: why = ""
            }
            throw TrainingError("\(key) must be \(supported), got \"\(value)\"\(why)")
        }
        return p
    }

    /// Reads `precision` (Lightning) or `mixed_precision` (accelerate) from a JSON config; both given must agree.
    static func fromConfig(_ r: ConfigReader) throws -> TrainingPrecision {
        let name = r.name
        func read(_ key: String) throws -> TrainingPrecision? {
            guard let v = try r.any(key), !(v is NSNull) else { return nil }
            let text: String
            if let s = v as? String {
                text = s
            } else if let n = v as? NSNumber, !ConfigReader.isBool(n) {
                text = n.stringValue
            } else {
                throw TrainingError("\(name): \(key) must be a string")
            }
            do { return try parse(text, key: key) } catch { throw TrainingError("\(name): \(error)") }
        }
        let a = try read("precision"), b = try read("mixed_precision")
        if let a, let b, a != b { throw TrainingError("\(name): precision \"\(a.rawValue)\" and mixed_precision disagree; give one") }
        return a ?? b ?? .float32
    }

    /// The autocast type of the training forward (nil: float32).
    public var autocastDType: DType? { self == .bf16Mixed ? .bfloat16 : nil }

    /// Runs the forward / loss `body` under this precision's autocast.
    public func forward<T>(_ body: () throws -> T) rethrows -> T { try Autocast.scope(autocastDType, body) }
}
