// Fixture loading for the Tokenizers tests. Fixtures are written by tools/fixtures/tokenizers.py from
// transformers 5.x (CLIPTokenizer / BertTokenizer); CI only reads them.
import Foundation
import XCTest

enum Fixtures {
    static let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures")

    static func url(_ name: String) -> URL { directory.appendingPathComponent(name) }

    static func json(_ name: String) throws -> [String: Any] {
        let object = try JSONSerialization.jsonObject(with: Data(contentsOf: url(name)))
        return try XCTUnwrap(object as? [String: Any], "\(name) is not a JSON object")
    }

    /// JSON-lines file decoded line by line (JSONDecoder: JSONSerialization drops a leading U+FEFF in strings).
    static func jsonLines<T: Decodable>(_ name: String, as type: T.Type) throws -> [T] {
        let text = try String(contentsOf: url(name), encoding: .utf8)
        return try text.split(separator: "\n").map { try JSONDecoder().decode(T.self, from: Data($0.utf8)) }
    }


    static func temporaryDirectory() throws -> URL {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tok-tests-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        return dir
    }
}

/// FNV-1a 64 over "token\n" UTF-8 bytes, as fnv1a64 in tools/fixtures/tokenizers.py.
func fnv1a64<S: Sequence>(_ tokens: S) -> UInt64 where S.Element == String {
    var h: UInt64 = 0xCBF2_9CE4_8422_2325
    for t in tokens {
        for b in t.utf8 { h = (h ^ UInt64(b)) &* 0x100_0000_01B3 }
        h = (h ^ 10) &* 0x100_0000_01B3
    }
    return h
}
