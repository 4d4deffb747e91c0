// Fixture access for ImagingTests (files written by tools/fixtures/imaging.py with Pillow and diffusers).
import Foundation
import XCTest
@testable import Imaging

enum Fixtures {
    static let dir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures")
    static func path(_ name: String) -> String { dir.appendingPathComponent(name).path }

    static let manifest: [String: Any] = {
        guard let data = try? Data(contentsOf: dir.appendingPathComponent("manifest.json")),
              let obj = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else { return [:] }
        return obj
    }()

    static func u8(_ name: String) throws -> [UInt8] {
        [UInt8](try Data(contentsOf: dir.appendingPathComponent(name)))
    }

    static func f32(_ name: String) throws -> [Float] {
        let d = try Data(contentsOf: dir.appendingPathComponent(name))
        return d.withUnsafeBytes { raw in
            (0..<(d.count / 4)).map { Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: $0 * 4, as: UInt32.self))) }
        }
    }

    static func list(_ key: String) throws -> [[String: Any]] {
        try XCTUnwrap(manifest[key] as? [[String: Any]], "manifest.json has no list \(key)")
    }

    static func dict(_ key: String) throws -> [String: Any] {
        try XCTUnwrap(manifest[key] as? [String: Any], "manifest.json has no object \(key)")
    }
}

/// Largest absolute difference and number of differing elements.
func compareBytes(_ a: [UInt8], _ b: [UInt8]) -> (maxDiff: Int, differing: Int) {
    var m = 0, n = 0
    for (x, y) in zip(a, b) { let d = abs(Int(x) - Int(y)); m = max(m, d); if d != 0 { n += 1 } }
    return (m, n)
}

func int(_ v: Any?) -> Int? { (v as? NSNumber)?.intValue }
