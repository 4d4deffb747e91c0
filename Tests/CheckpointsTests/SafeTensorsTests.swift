// Tests for SafeTensors against files written by safetensors.torch.save_file.
import Foundation
import XCTest
@testable import Checkpoints

final class SafeTensorsTests: XCTestCase {
    func testReadsReferenceFileBitForBit() throws {
        let st = try SafeTensors(url: Fixtures.url("reference.safetensors"))
        XCTAssertEqual(st.metadata, Fixtures.expected.metadata)
        XCTAssertEqual(Set(st.records.map(\.name)), Set(Fixtures.expected.tensors.keys))
        try Fixtures.assertMatchesExpected(st.tensors)
    }

    func testWriterMatchesReferenceBytes() throws {
        let ref = try Data(contentsOf: Fixtures.url("reference.safetensors"))
        let entries = try Fixtures.expected.tensors.map { name, t -> SafeTensorsEntry in
            let dt = try XCTUnwrap(Fixtures.torchDType[t.dtype])
            return SafeTensorsEntry(name: name, dtype: dt, shape: t.shape, bytes: Fixtures.bytes(hex: t.hex))
        }
        let ours = try SafeTensors.serialize(entries.shuffled(), metadata: Fixtures.expected.metadata)
        XCTAssertEqual(ours.count, ref.count)
        XCTAssertEqual(ours, ref, "writer output differs from safetensors.torch.save_file")
        // header padded to 8 bytes with spaces
        let n = Int(ours.prefix(8).withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) })
        XCTAssertEqual(n % 8, 0)

        let tmp = FileManager.default.temporaryDirectory.appendingPathComponent("ckpt-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: tmp, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: tmp) }
        let out = tmp.appendingPathComponent("w.safetensors")
        try SafeTensors.write(entries, metadata: Fixtures.expected.metadata, to: out)
        XCTAssertEqual(try Data(contentsOf: out), ref)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: tmp.path), ["w.safetensors"], "temp file left behind")
        // round trip through records
        let back = try SafeTensors(url: out)
        try SafeTensors.write(tensors: back.records, metadata: back.metadata, to: out)
        XCTAssertEqual(try Data(contentsOf: out), ref)
        if let keep = ProcessInfo.processInfo.environment["LDM_CKPT_KEEP_WRITER_OUTPUT"] {
            try ref.write(to: URL(fileURLWithPath: keep))
            try SafeTensors.write(tensors: back.records, metadata: back.metadata, to: URL(fileURLWithPath: keep))
        }
    }

    func testWriterRejectsBadEntries() {
        XCTAssertThrowsError(try SafeTensors.serialize([SafeTensorsEntry(name: "a", dtype: .F32, shape: [3], bytes: Data(count: 8))])) {
            XCTAssertTrue("\($0)".contains("needs 12 bytes"), "\($0)")
        }
        let e = SafeTensorsEntry(name: "a", dtype: .U8, shape: [1], bytes: Data([1]))
        XCTAssertThrowsError(try SafeTensors.serialize([e, e])) { XCTAssertTrue("\($0)".contains("duplicate"), "\($0)") }
    }

    func testEmptyFileAndNoMetadata() throws {
        let d = try SafeTensors.serialize([])
        XCTAssertEqual(d.count, 16)   // "{}" padded to 8
        let st = try SafeTensors(data: d)
        XCTAssertNil(st.metadata)
        XCTAssertTrue(st.records.isEmpty)
    }

    func testZeroCopyDataKeepsMappingAlive() throws {
        var data: Data?
        do {
            let st = try SafeTensors(url: Fixtures.url("reference.safetensors"))
            data = try st["model.lin.weight"]?.rawData()
        }
        XCTAssertEqual(data.map(Fixtures.hex), Fixtures.expected.tensors["model.lin.weight"]?.hex)
    }
}
