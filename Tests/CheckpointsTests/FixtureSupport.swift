// Shared helpers: fixture paths and the expected values written by tools/fixtures/checkpoints.py.
import Foundation
import XCTest
@testable import Checkpoints

enum Fixtures {
    static let dir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures")
    static func url(_ name: String) -> URL { dir.appendingPathComponent(name) }

    struct Tensor { let dtype: String; let shape: [Int]; let hex: String; let floatBits: [UInt32] }

    static let expected: (tensors: [String: Tensor], metadata: [String: String]) = {
        guard let d = try? Data(contentsOf: url("expected.json")),
              let o = try? JSONSerialization.jsonObject(with: d) as? [String: Any],
              let ts = o["tensors"] as? [String: [String: Any]], let meta = o["metadata"] as? [String: String]
        else { return ([:], [:]) }
        return (tensors(ts), meta)
    }()

    /// legacy/expected.json (tools/fixtures/legacy_torch.py): file name -> tensor name -> expected tensor.
    static let legacyExpected: [String: [String: Tensor]] = {
        guard let d = try? Data(contentsOf: url("legacy/expected.json")),
              let o = try? JSONSerialization.jsonObject(with: d) as? [String: [String: [String: Any]]] else { return [:] }
        return o.mapValues(tensors)
    }()

    private static func tensors(_ ts: [String: [String: Any]]) -> [String: Tensor] {
        var out: [String: Tensor] = [:]
        for (k, v) in ts {
            out[k] = Tensor(dtype: v["dtype"] as? String ?? "?", shape: v["shape"] as? [Int] ?? [],
                            hex: v["hex"] as? String ?? "", floatBits: (v["float_bits"] as? [Int] ?? []).map { UInt32($0) })
        }
        return out
    }

    static let torchDType: [String: StorageDType] = [
        "float32": .F32, "float16": .F16, "bfloat16": .BF16, "float64": .F64, "int64": .I64, "int32": .I32,
        "int16": .I16, "int8": .I8, "uint8": .U8, "bool": .BOOL, "float8_e4m3fn": .F8_E4M3,
        "float8_e5m2": .F8_E5M2, "uint16": .U16,
    ]

    static func hex(_ d: Data) -> String { d.map { String(format: "%02x", $0) }.joined() }
    static func bytes(hex: String) -> Data {
        var d = Data(capacity: hex.count / 2)
        var it = hex.utf8.makeIterator()
        func nib(_ c: UInt8) -> UInt8 { c <= 57 ? c - 48 : c - 87 }
        while let a = it.next(), let b = it.next() { d.append(nib(a) << 4 | nib(b)) }
        return d
    }

    /// Checks every expected tensor is present in `records` (under `prefix`+name) bit for bit.
    static func assertMatchesExpected(_ records: [String: TensorRecord], names: [String]? = nil, prefix: String = "",
                                      expected exp: [String: Tensor] = expected.tensors,
                                      file: StaticString = #filePath, line: UInt = #line) throws {
        XCTAssertFalse(exp.isEmpty, "expected.json missing", file: file, line: line)
        for name in names ?? Array(exp.keys) {
            guard let e = exp[name] else { XCTFail("no expected \(name)", file: file, line: line); continue }
            guard let r = records[prefix + name] else { XCTFail("missing tensor \(name)", file: file, line: line); continue }
            XCTAssertEqual(r.dtype, torchDType[e.dtype], name, file: file, line: line)
            XCTAssertEqual(r.shape, e.shape, name, file: file, line: line)
            XCTAssertEqual(hex(try r.rawData()), e.hex, "raw bytes of \(name)", file: file, line: line)
            let bits = try r.floats().map(\.bitPattern)
            XCTAssertEqual(bits, e.floatBits, "float conversion of \(name)", file: file, line: line)
            let buf = UnsafeMutablePointer<Float>.allocate(capacity: max(r.elementCount, 1))
            defer { buf.deallocate() }
            try r.copyFloats(into: buf)
            XCTAssertEqual((0..<r.elementCount).map { buf[$0].bitPattern }, e.floatBits, name, file: file, line: line)
        }
    }

    /// corpus/manifest.json (tools/fixtures/checkpoints.py) and corpus/manifest_legacy.json (legacy_torch.py).
    static func corpusManifest() -> [String: String] {
        var out: [String: String] = [:]
        for name in ["manifest.json", "manifest_legacy.json"] {
            guard let d = try? Data(contentsOf: url("corpus/" + name)),
                  let m = try? JSONSerialization.jsonObject(with: d) as? [String: String] else { return [:] }
            out.merge(m) { a, _ in a }
        }
        return out
    }
}
