// Typed, validating access to a JSON training configuration, read through Codable: every error names the file and
// the key, unknown keys are refused with the list of known ones, relative paths resolve against the config's folder.
// A key that is absent or null takes its default through NeuralNetwork's `decode(_:default:)`.
import Foundation
import NeuralNetwork

public struct ConfigReader {
    let container: KeyedDecodingContainer<ConfigKey>
    public let name: String
    public let baseDir: URL?

    /// userInfo keys that carry the file name (for messages) and the folder relative paths resolve against.
    public static let nameKey = CodingUserInfoKey(rawValue: "ldm.trainConfig.name")!
    public static let baseDirKey = CodingUserInfoKey(rawValue: "ldm.trainConfig.baseDir")!

    /// Decodes a config type from a file's bytes; anything that is not a JSON object is refused by name.
    public static func decode<T: Decodable>(_ type: T.Type, from data: Data, name: String, baseDir: URL?,
                                            userInfo: [CodingUserInfoKey: String] = [:]) throws -> T {
        let decoder = JSONDecoder()
        decoder.userInfo[nameKey] = name
        if let baseDir { decoder.userInfo[baseDirKey] = baseDir }
        for (key, value) in userInfo { decoder.userInfo[key] = value }
        do {
            return try decoder.decode(T.self, from: data)
        } catch is DecodingError {
            throw TrainingError("\(name): not a JSON object")
        }
    }

    /// The reader of a config type's `init(from:)`: checks the keys against `knownKeys` first.
    public init(_ decoder: Decoder, knownKeys: Set<String>) throws {
        container = try decoder.container(keyedBy: ConfigKey.self)
        name = decoder.userInfo[Self.nameKey] as? String ?? "config"
        baseDir = decoder.userInfo[Self.baseDirKey] as? URL
        let unknown = Set(container.allKeys.map(\.stringValue)).subtracting(knownKeys).sorted()
        guard unknown.isEmpty else {
            throw TrainingError("\(name): unknown keys \(unknown.joined(separator: ", ")) (known: \(knownKeys.sorted().joined(separator: ", ")))")
        }
    }

    public func error(_ key: String, _ why: String) -> TrainingError { TrainingError("\(name): \(key) \(why)") }

    /// The value at `key` (nil when absent or null); a value of another JSON type is the error `key why`.
    func value<T: Decodable>(_ key: String, _ type: T.Type, _ why: String) throws -> T? {
        do {
            return try container.decodeIfPresent(T.self, forKey: ConfigKey(stringValue: key))
        } catch is DecodingError {
            throw error(key, why)
        }
    }

    /// The key is given as JSON null (a value some keys use to switch a default off).
    public func isNull(_ key: String) -> Bool {
        let k = ConfigKey(stringValue: key)
        return container.contains(k) && (try? container.decodeNil(forKey: k)) == true
    }

    public func number(_ key: String) throws -> Double? {
        guard let x = try value(key, Double.self, "must be a number") else { return nil }
        guard x.isFinite else { throw error(key, "must be a number") }
        return x
    }

    public func int(_ key: String) throws -> Int? {
        guard let x = try number(key) else { return nil }
        guard x == x.rounded(), abs(x) < 1e15 else { throw error(key, "must be an integer, got \(x)") }
        return Int(x)
    }

    public func positiveInt(_ key: String) throws -> Int? {
        guard let v = try int(key) else { return nil }
        return try positive(key, v)
    }

    /// `v`, which must be > 0.
    public func positive(_ key: String, _ v: Int) throws -> Int {
        guard v > 0 else { throw error(key, "must be positive, got \(v)") }
        return v
    }

    public func nonNegative(_ key: String) throws -> Double? {
        guard let v = try number(key) else { return nil }
        guard v >= 0 else { throw error(key, "must be >= 0, got \(v)") }
        return v
    }

    public func string(_ key: String) throws -> String? {
        guard let s = try value(key, String.self, "must be a non-empty string") else { return nil }
        guard !s.isEmpty else { throw error(key, "must be a non-empty string") }
        return s
    }

    public func bool(_ key: String) throws -> Bool? {
        try value(key, Bool.self, "must be true or false")
    }

    /// The value at `key`, or `defaultValue` when absent or null.
    public func bool(_ key: String, default defaultValue: Bool) throws -> Bool {
        do {
            return try container.decode(ConfigKey(stringValue: key), default: defaultValue)
        } catch is DecodingError {
            throw error(key, "must be true or false")
        }
    }

    /// An inline JSON object (a diffusers or transformers config passed on as is).
    public func object(_ key: String, _ why: String = "must be a JSON object") throws -> [String: Any]? {
        guard let v = try value(key, JSONConfigValue.self, why) else { return nil }
        guard let o = v.value as? [String: Any] else { throw error(key, why) }
        return o
    }

    /// Any JSON value at `key` (NSNumber for numbers and booleans, as JSONSerialization gives them).
    public func any(_ key: String) throws -> Any? {
        try value(key, JSONConfigValue.self, "must be a JSON value")?.value
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

    /// A string enum: an unknown name is "has invalid value".
    public func choice<E: RawRepresentable>(_ key: String, default d: E) throws -> E where E.RawValue == String {
        guard let s = try string(key) else { return d }
        guard let e = E(rawValue: s) else { throw error(key, "has invalid value \"\(s)\"") }
        return e
    }

    public func required<T>(_ key: String, _ get: (String) throws -> T?) throws -> T {
        guard let v = try get(key) else { throw error(key, "is missing") }
        return v
    }
}

extension ConfigReader {
    /// A JSON boolean among the NSNumbers of `JSONConfigValue` / JSONSerialization (objCType "c"; numbers are "i", "q", "d").
    static func isBool(_ n: NSNumber) -> Bool { String(cString: n.objCType) == "c" }
}

/// Any JSON value, decoded into the Foundation types JSONSerialization gives (NSNumber, String, [Any],
/// [String: Any], NSNull), for inline model configs that are passed on to their own decoders.
struct JSONConfigValue: Decodable {
    let value: Any

    init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() {
            value = NSNull()
        } else if let b = try? c.decode(Bool.self) {
            value = NSNumber(value: b)
        } else if let i = try? c.decode(Int.self) {
            value = NSNumber(value: i)
        } else if let d = try? c.decode(Double.self) {
            value = NSNumber(value: d)
        } else if let s = try? c.decode(String.self) {
            value = s
        } else if let a = try? c.decode([JSONConfigValue].self) {
            value = a.map(\.value)
        } else {
            value = try c.decode([String: JSONConfigValue].self).mapValues(\.value)
        }
    }
}
