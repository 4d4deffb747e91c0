// Typed, validating access to a JSON training configuration: every error names the file and the key, unknown keys
// are refused with the list of known ones, relative paths resolve against the config's folder.
import Foundation

public struct ConfigReader {
    public let values: [String: Any]
    public let name: String
    public let baseDir: URL?

    public init(data: Data, name: String, baseDir: URL?, knownKeys: Set<String>) throws {
        guard let obj = try? JSONSerialization.jsonObject(with: data), let d = obj as? [String: Any] else {
            throw TrainingError("\(name): not a JSON object")
        }
        let unknown = Set(d.keys).subtracting(knownKeys).sorted()
        guard unknown.isEmpty else {
            throw TrainingError("\(name): unknown keys \(unknown.joined(separator: ", ")) (known: \(knownKeys.sorted().joined(separator: ", ")))")
        }
        values = d; self.name = name; self.baseDir = baseDir
    }

    public func error(_ key: String, _ why: String) -> TrainingError { TrainingError("\(name): \(key) \(why)") }

    func present(_ key: String) -> Any? {
        guard let v = values[key], !(v is NSNull) else { return nil }
        return v
    }

    /// JSONSerialization gives booleans as NSNumber of objCType "c" (integers are "i" / "q").
    static func isBool(_ n: NSNumber) -> Bool { String(cString: n.objCType) == "c" }

    public func number(_ key: String) throws -> Double? {
        guard let v = present(key) else { return nil }
        guard let n = v as? NSNumber, !Self.isBool(n), n.doubleValue.isFinite else { throw error(key, "must be a number") }
        return n.doubleValue
    }

    public func int(_ key: String) throws -> Int? {
        guard let x = try number(key) else { return nil }
        guard x == x.rounded(), abs(x) < 1e15 else { throw error(key, "must be an integer, got \(x)") }
        return Int(x)
    }

    public func positiveInt(_ key: String) throws -> Int? {
        guard let v = try int(key) else { return nil }
        guard v > 0 else { throw error(key, "must be positive, got \(v)") }
        return v
    }

    public func nonNegative(_ key: String) throws -> Double? {
        guard let v = try number(key) else { return nil }
        guard v >= 0 else { throw error(key, "must be >= 0, got \(v)") }
        return v
    }

    public func string(_ key: String) throws -> String? {
        guard let v = present(key) else { return nil }
        guard let s = v as? String, !s.isEmpty else { throw error(key, "must be a non-empty string") }
        return s
    }

    public func bool(_ key: String) throws -> Bool? {
        guard let v = present(key) else { return nil }
        guard let n = v as? NSNumber, Self.isBool(n) else { throw error(key, "must be true or false") }
        return n.boolValue
    }

    public func object(_ key: String) throws -> [String: Any]? {
        guard let v = present(key) else { return nil }
        guard let o = v as? [String: Any] else { throw error(key, "must be a JSON object") }
        return o
    }

    /// A path, resolved against the config's folder when relative.
    public func path(_ key: String) throws -> String? {
        try string(key).map { p in p.hasPrefix("/") || baseDir == nil ? p : baseDir!.appendingPathComponent(p).path }
    }

    /// A path that must exist.
    public func existingPath(_ key: String) throws -> String? {
        guard let p = try path(key) else { return nil }
        guard FileManager.default.fileExists(atPath: p) else { throw error(key, "\(p) does not exist") }
        return p
    }

    public func choice(_ key: String, _ allowed: [String], default d: String) throws -> String {
        guard let s = try string(key) else { return d }
        guard allowed.contains(s) else { throw error(key, "must be one of \(allowed.joined(separator: ", ")), got \"\(s)\"") }
        return s
    }

    public func required<T>(_ key: String, _ get: (String) throws -> T?) throws -> T {
        guard let v = try get(key) else { throw error(key, "is missing") }
        return v
    }
}
