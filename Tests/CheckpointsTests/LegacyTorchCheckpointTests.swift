// Legacy (pre-1.6, non-zip) torch.save files written by tools/fixtures/legacy_torch.py: values bit for bit against
// torch's own, and against the zip reader on the same object. The malformed ones are in the corpus (CorpusTests).
import Foundation
import XCTest
@testable import Checkpoints

final class LegacyTorchCheckpointTests: XCTestCase {
    private func expected(_ file: String) throws -> [String: Fixtures.Tensor] {
        let e = try XCTUnwrap(Fixtures.legacyExpected[file], "legacy/expected.json lacks \(file)")
        XCTAssertFalse(e.isEmpty)
        return e
    }

    func testStateDictMatchesTorchAndTheZipReader() throws {
        let f = try CheckpointFile.open(Fixtures.url("legacy/state_dict.pt"))
        XCTAssertEqual(f.format, .torchLegacy)
        let ck = try XCTUnwrap(f.torch)
        XCTAssertTrue(ck.isLegacy)
        XCTAssertNil(ck.archive)
        let exp = try expected("state_dict.pt")
        XCTAssertEqual(Set(f.tensors.keys), Set(exp.keys))
        try Fixtures.assertMatchesExpected(f.tensors, expected: exp)
        XCTAssertEqual(f.tensors["net.f16"]?.dtype, .F16)
        XCTAssertEqual(f.tensors["net.bf16"]?.dtype, .BF16)
        XCTAssertEqual(f.tensors["net.i64"]?.dtype, .I64)
        XCTAssertEqual(f.tensors["ema.inner.w"]?.dtype, .F64)
        XCTAssertFalse(try XCTUnwrap(f.tensors["net.t"]).isContiguous)
        XCTAssertFalse(try XCTUnwrap(f.tensors["net.shared.b"]).isContiguous)
        XCTAssertTrue(f.tensors["net.shared.a"]?.storage === f.tensors["net.shared.b"]?.storage, "one storage")
        XCTAssertEqual(f.tensors["net.shared.b"]?.byteOffset, 4)
        XCTAssertNotNil(ck.root.dictValue?["net"]?.dictValue?.state, "OrderedDict _metadata applied by BUILD")
        // int64 exactly (2^40 + 3 has no float32)
        let i64 = try XCTUnwrap(f.tensors["net.i64"]).rawData().withUnsafeBytes { Array($0.bindMemory(to: Int64.self)) }
        XCTAssertEqual(i64, [0, -1, (1 << 40) + 3, -(1 << 50), 7])

        let zip = try CheckpointFile.open(Fixtures.url("legacy/state_dict_zip.pt"))
        XCTAssertEqual(zip.format, .torchZip)
        XCTAssertEqual(Set(zip.tensors.keys), Set(f.tensors.keys))
        for (k, r) in f.tensors {
            let z = try XCTUnwrap(zip.tensors[k])
            XCTAssertEqual(r.dtype, z.dtype, k)
            XCTAssertEqual(r.shape, z.shape, k)
            XCTAssertEqual(r.strides, z.strides, k)
            XCTAssertEqual(try r.rawData(), try z.rawData(), k)
        }
    }

    func testProtocol4LightningCheckpoint() throws {
        let f = try CheckpointFile.open(Fixtures.url("legacy/lightning_p4.ckpt"))
        XCTAssertEqual(f.format, .torchLegacy)
        XCTAssertEqual(f.metadata["global_step"], "5")
        XCTAssertEqual(f.metadata["epoch"], "2")
        let exp = try expected("lightning_p4.ckpt")
        XCTAssertEqual(Set(f.tensors.keys), Set(exp.keys))
        try Fixtures.assertMatchesExpected(f.tensors, expected: exp)
    }

    func testStorageViews() throws {
        // view_metadata (view_key, offset, numel): a tensor on elements 2..<7 of its root storage (torch < 1.0 wrote these).
        let f = try CheckpointFile.open(Fixtures.url("legacy/storage_view.pt"))
        try Fixtures.assertMatchesExpected(f.tensors, expected: try expected("storage_view.pt"))
        XCTAssertEqual(try f.tensors["v"]?.floats(), [1.5, 2.0, 2.5])
        XCTAssertEqual(f.tensors["v"]?.storage.byteCount, 20)
    }

    func testLPIPSPackageLayout() throws {
        // The pickles of the lpips package's vgg.pth (a Python 2 pickle: SHORT_BINSTRING strings, cuda:0 storages) with
        // seeded weights in place of lpips'.
        let url = Fixtures.url("legacy/lpips_vgg_layout.pth")
        guard FileManager.default.fileExists(atPath: url.path) else { throw XCTSkip("fixture written only when lpips is installed") }
        let f = try CheckpointFile.open(url)
        XCTAssertEqual(f.tensors.keys.sorted(), (0..<5).map { "lin\($0).model.1.weight" })
        try Fixtures.assertMatchesExpected(f.tensors, expected: try expected("lpips_vgg_layout.pth"))
        XCTAssertEqual(f.tensors["lin4.model.1.weight"]?.shape, [1, 512, 1, 1])
        let ck = try XCTUnwrap(f.torch)
        guard case .tensor(let t)? = ck.stateDict?["lin0.model.1.weight"] else { return XCTFail("lin0") }
        XCTAssertEqual(t.storage.location, "cuda:0")
        XCTAssertEqual(t.storage.typeName, "torch.FloatStorage")
    }

    /// The real file, when LDM_LPIPS_VGG_PTH names it (e.g. .../site-packages/lpips/weights/v0.1/vgg.pth).
    func testRealLPIPSWeightsWhenGiven() throws {
        guard let path = ProcessInfo.processInfo.environment["LDM_LPIPS_VGG_PTH"] else { throw XCTSkip("LDM_LPIPS_VGG_PTH not set") }
        let f = try CheckpointFile.open(URL(fileURLWithPath: path))
        XCTAssertEqual(f.format, .torchLegacy)
        XCTAssertEqual(f.tensors.keys.sorted(), (0..<5).map { "lin\($0).model.1.weight" })
        for (k, c) in [64, 128, 256, 512, 512].enumerated() {
            let r = try XCTUnwrap(f.tensors["lin\(k).model.1.weight"])
            XCTAssertEqual(r.shape, [1, c, 1, 1])
            XCTAssertTrue(try r.floats().allSatisfy { $0.isFinite && $0 >= 0 })
        }
    }

    func testTruncatedAtEveryByteThrowsCheckpointErrors() throws {
        for name in ["legacy/state_dict.pt", "legacy/storage_view.pt"] {
            let data = try Data(contentsOf: Fixtures.url(name))
            for n in 0..<data.count {
                do {
                    try Fuzz.exercise(data.prefix(n))
                    XCTFail("\(name) cut to \(n) bytes opened")
                } catch let e as CheckpointError {
                    XCTAssertFalse(e.message.isEmpty)
                } catch { XCTFail("\(name) cut to \(n) bytes: \(error)") }
            }
        }
    }
}
