// Tests TorchGenerator against torch 2.x CPU generator output recorded by tools/fixtures/rng.py.
// Tolerance: bitwise equality. Every value is produced by the same sequence of IEEE float/double operations
// as ATen's kernels (mt19937 integers, exact uniform scaling, the AVX2 cephes polynomials op for op), so any
// difference is a real bug. The only libm-dependent values (the scalar kernel's logf/cosf/sinf and the
// < 16-element double Box-Muller) are bit-exact with glibc; on other platforms they are allowed 1 float ulp.
import Foundation
import XCTest
@testable import TensorCore

final class TorchGeneratorTests: XCTestCase {
    struct Call: Decodable { let op: String; let count: Int; let f32le: String?; let high: Int64?; let values: [Int64]? }
    struct Case: Decodable { let seed: String; let calls: [Call]; let state_after: String }
    struct Resume: Decodable { let state: String; let randn3: String; let randn20: String }
    struct Doc: Decodable { let torch_version: String; let kernel: String; let cases: [Case]; let resume: Resume }

    static func load(_ kernel: String) throws -> Doc {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("Fixtures/rng/rng_\(kernel).json")
        return try JSONDecoder().decode(Doc.self, from: Data(contentsOf: url))
    }

    static func bytes(_ b64: String) throws -> [UInt8] {
        guard let d = Data(base64Encoded: b64) else { throw TorchGeneratorError.invalidRange("bad base64 in fixture") }
        return [UInt8](d)
    }

    static func floats(_ b64: String) throws -> [Float] {
        let b = try bytes(b64)
        return stride(from: 0, to: b.count, by: 4).map { i in
            Float(bitPattern: UInt32(b[i]) | UInt32(b[i + 1]) << 8 | UInt32(b[i + 2]) << 16 | UInt32(b[i + 3]) << 24)
        }
    }

    func assertBits(_ got: [Float], _ want: [Float], libmDependent: Bool, _ what: String,
                    file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(got.count, want.count, what, file: file, line: line)
        #if os(Linux)
        let maxUlps: Int64 = 0
        #else
        let maxUlps: Int64 = libmDependent ? 1 : 0
        #endif
        var bad = 0
        for (i, (g, w)) in zip(got, want).enumerated() {
            let d = abs(Int64(Int32(bitPattern: g.bitPattern)) - Int64(Int32(bitPattern: w.bitPattern)))
            if d > maxUlps {
                if bad < 3 { XCTFail("\(what)[\(i)]: got \(g) want \(w)", file: file, line: line) }
                bad += 1
            }
        }
        if bad > 3 { XCTFail("\(what): \(bad) mismatches in total", file: file, line: line) }
    }

    func replay(kernel: TorchGenerator.NormalKernel) throws {
        let doc = try Self.load(kernel.rawValue)
        XCTAssertEqual(doc.kernel, kernel.rawValue)
        for c in doc.cases {
            let seed = try XCTUnwrap(UInt64(c.seed))
            let g = TorchGenerator(seed: seed, normalKernel: kernel)
            for (k, call) in c.calls.enumerated() {
                let what = "seed \(c.seed) call \(k) \(call.op)(\(call.count))"
                switch call.op {
                case "randn":
                    let libm = kernel == .scalar || call.count < 16
                    assertBits(g.normal(count: call.count), try Self.floats(try XCTUnwrap(call.f32le)), libmDependent: libm, what)
                case "rand":
                    assertBits(g.uniform(count: call.count), try Self.floats(try XCTUnwrap(call.f32le)), libmDependent: false, what)
                case "randint":
                    XCTAssertEqual(try g.randomInt(upperBound: try XCTUnwrap(call.high), count: call.count), call.values, what)
                default:
                    XCTFail("unknown op \(call.op)")
                }
            }
            XCTAssertEqual(g.state, try Self.bytes(c.state_after), "get_state() bytes after seed \(c.seed)")
        }
        // Resume from a torch state holding a cached double normal sample.
        let g = try TorchGenerator(state: try Self.bytes(doc.resume.state), normalKernel: kernel)
        assertBits(g.normal(count: 3), try Self.floats(doc.resume.randn3), libmDependent: true, "resume randn(3)")
        assertBits(g.normal(count: 20), try Self.floats(doc.resume.randn20), libmDependent: kernel == .scalar, "resume randn(20)")
    }

    func testAVX2KernelMatchesTorch() throws { try replay(kernel: .avx2) }

    func testScalarKernelMatchesTorch() throws { try replay(kernel: .scalar) }

    func testStateRoundTripContinuesIdentically() throws {
        let a = TorchGenerator(seed: 7)
        _ = a.normal(count: 1)   // leaves a cached normal sample
        _ = a.uniform(count: 700) // crosses an mt19937 twist
        let b = try TorchGenerator(state: a.state)
        XCTAssertEqual(b.initialSeed, 7)
        XCTAssertEqual(a.normal(count: 5), b.normal(count: 5))
        XCTAssertEqual(a.normal(count: 40), b.normal(count: 40))
        XCTAssertEqual(a.uniform(count: 3), b.uniform(count: 3))
    }

    func testManualSeedResetsCacheAndEngine() {
        let g = TorchGenerator(seed: 3)
        let first = g.normal(count: 1)
        g.manualSeed(3)
        XCTAssertEqual(g.normal(count: 1), first)
        XCTAssertEqual(g.normal(count: 0), [])
    }

    func testBadInputThrows() {
        XCTAssertThrowsError(try TorchGenerator(state: [1, 2, 3]))
        var bytes = TorchGenerator(seed: 1).state
        bytes[8] = 0; bytes[9] = 0; bytes[10] = 0; bytes[11] = 0 // left = 0 is invalid
        XCTAssertThrowsError(try TorchGenerator(state: bytes))
        XCTAssertThrowsError(try TorchGenerator(seed: 1).randomInt(low: 5, upperBound: 5, count: 1))
    }
}
