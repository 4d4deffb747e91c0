// A JSON value for the HTTP API (RFC 8259): AUTOMATIC1111's request bodies are loose pydantic models (unknown keys
// ignored, null = default), so requests are read as a tree and each field is checked by name, with an error that names
// it; responses are built the same way and written with sorted keys.
import Foundation

public enum JSON: Equatable, Sendable {
    case null
    case bool(Bool)
    case int(Int)
    case double(Double)
    case string(String)
    case array([JSON])
    case object([String: JSON])

    /// Parses a request body; a malformed document is a 400 naming the body.
    public static func parse(_ data: Data) throws -> JSON {
        do { return try JSONDecoder().decode(JSON.self, from: data) } catch {
            throw APIError.badRequest("JSON body", "the request body is not valid JSON")
        }
    }

    public func serialized() -> Data {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return (try? e.encode(self)) ?? Data("null".utf8)
    }

    public var string: String? {
        if case .string(let s) = self { return s }
        return nil
    }
    public var object: [String: JSON]? {
        if case .object(let o) = self { return o }
        return nil
    }
    public var array: [JSON]? {
        if case .array(let a) = self { return a }
        return nil
    }
    public var number: Double? {
        switch self {
            case .int(let i): return Double(i)
            case .double(let d): return d
            default: return nil
        }
    }
    public var int: Int? {
        switch self {
        case .int(let i): return i
        case .double(let d) where d.rounded() == d && abs(d) < 9e15: return Int(d)
        default: return nil
        }
    }
    public var bool: Bool? {
        if case .bool(let b) = self { return b }
        return nil
    }
    public subscript(key: String) -> JSON? { object?[key] }

    var typeName: String {
        switch self {
        case .null:
            return "null"
            case .bool:
                return "a boolean"
                case .int, .double: return "a number"
        case .string:
            return "a string"
            case .array:
                return "an array"
                case .object: return "an object"
        }
    }
}

extension JSON: Codable {
    public init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() { self = .null }
        else if let b = try? c.decode(Bool.self) { self = .bool(b) }
        else if let i = try? c.decode(Int.self) { self = .int(i) }
        else if let d = try? c.decode(Double.self) { self = .double(d) }
        else if let s = try? c.decode(String.self) { self = .string(s) }
        else if let a = try? c.decode([JSON].self) { self = .array(a) }
        else { self = .object(try c.decode([String: JSON].self)) }
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case .null: try c.encodeNil()
        case .bool(let b): try c.encode(b)
        case .int(let i): try c.encode(i)
        case .double(let d): try d.isFinite ? c.encode(d) : c.encodeNil()
        case .string(let s): try c.encode(s)
        case .array(let a): try c.encode(a)
        case .object(let o): try c.encode(o)
        }
    }
}

extension JSON: ExpressibleByStringLiteral, ExpressibleByIntegerLiteral, ExpressibleByFloatLiteral, ExpressibleByBooleanLiteral,
                ExpressibleByArrayLiteral, ExpressibleByDictionaryLiteral, ExpressibleByNilLiteral {
    public init(stringLiteral v: String) { self = .string(v) }
    public init(integerLiteral v: Int) { self = .int(v) }
    public init(floatLiteral v: Double) { self = .double(v) }
    public init(booleanLiteral v: Bool) { self = .bool(v) }
    public init(arrayLiteral v: JSON...) { self = .array(v) }
    public init(dictionaryLiteral v: (String, JSON)...) { self = .object(Dictionary(v, uniquingKeysWith: { $1 })) }
    public init(nilLiteral: ()) { self = .null }
    init(_ s: String?) { self = s.map { .string($0) } ?? .null }
}

/// The fields of a request object, read by name with type and range checks; errors name the field (422, as pydantic's
/// validation errors in AUTOMATIC1111's API). A missing key or null takes the default.
public struct Fields {
    public let values: [String: JSON]
    public init(_ body: JSON) throws {
        guard let o = body.object else { throw APIError.unprocessable("body", "the request body must be a JSON object, got \(body.typeName)") }
        values = o
    }
    public init(object: [String: JSON]) { values = object }

    func present(_ k: String) -> JSON? {
        guard let v = values[k], v != .null else { return nil }
        return v
    }

    public func string(_ k: String, _ d: String) throws -> String { try optionalString(k) ?? d }
    public func optionalString(_ k: String) throws -> String? {
        guard let v = present(k) else { return nil }
        guard let s = v.string else { throw APIError.unprocessable(k, "\(k) must be a string, got \(v.typeName)") }
        return s
    }
    public func int(_ k: String, _ d: Int, in range: ClosedRange<Int>? = nil) throws -> Int {
        guard let v = present(k) else { return d }
        guard let i = v.int else { throw APIError.unprocessable(k, "\(k) must be an integer, got \(v.typeName)") }
        if let r = range, !r.contains(i) { throw APIError.unprocessable(k, "\(k) must be in \(r.lowerBound)...\(r.upperBound), got \(i)") }
        return i
    }
    public func double(_ k: String, _ d: Double, in range: ClosedRange<Double>? = nil) throws -> Double {
        guard let v = present(k) else { return d }
        guard let x = v.number, x.isFinite else { throw APIError.unprocessable(k, "\(k) must be a number, got \(v.typeName)") }
        if let r = range, !r.contains(x) { throw APIError.unprocessable(k, "\(k) must be in \(r.lowerBound)...\(r.upperBound), got \(x)") }
        return x
    }
    public func bool(_ k: String, _ d: Bool) throws -> Bool {
        guard let v = present(k) else { return d }
        guard let b = v.bool else { throw APIError.unprocessable(k, "\(k) must be true or false, got \(v.typeName)") }
        return b
    }
    public func object(_ k: String) throws -> [String: JSON] {
        guard let v = present(k) else { return [:] }
        guard let o = v.object else { throw APIError.unprocessable(k, "\(k) must be an object, got \(v.typeName)") }
        return o
    }
    public func stringArray(_ k: String) throws -> [String] {
        guard let v = present(k) else { return [] }
        guard let a = v.array else { throw APIError.unprocessable(k, "\(k) must be an array of strings, got \(v.typeName)") }
        return try a.enumerated().map { i, e in
            guard let s = e.string else { throw APIError.unprocessable(k, "\(k)[\(i)] must be a string, got \(e.typeName)") }
            return s
        }
    }
}
