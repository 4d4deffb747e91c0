// Model configurations decode the config.json that diffusers (ConfigMixin) and transformers (PretrainedConfig) save:
// a key that is absent, or null, takes the default of the reference __init__ argument.

extension KeyedDecodingContainer {
    /// The value at `key`, or `defaultValue` when the key is absent or null; a value of the wrong type still throws.
    public func decode<T: Decodable>(_ key: Key, default defaultValue: @autoclosure () throws -> T) throws -> T {
        try decodeIfPresent(T.self, forKey: key) ?? defaultValue()
    }
}

/// A config.json key by its name, for keys read outside a type's CodingKeys (shared fields, keys checked only to
/// refuse them).
public struct ConfigKey: CodingKey, ExpressibleByStringLiteral, Sendable {
    public let stringValue: String
    public var intValue: Int? { nil }
    public init(stringValue: String) { self.stringValue = stringValue }
    public init?(intValue: Int) { nil }
    public init(stringLiteral value: String) { stringValue = value }
}
