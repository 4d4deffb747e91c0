// Tests for TorchCheckpoint / Unpickler / ZipArchive against files written by torch.save.
import Foundation
import XCTest
@testable import Checkpoints

final class TorchCheckpointTests: XCTestCase {
    func testLightningCheckpointProtocol2() throws {
        let ck = try TorchCheckpoint(url: Fixtures.url("lightning.ckpt"))
        XCTAssertEqual(ck.prefix, "lightning")
        XCTAssertEqual(ck.integer("global_step"), 5)
        let recs = try ck.records()
        XCTAssertEqual(Set(recs.keys), Set(Fixtures.expected.tensors.keys))
        try Fixtures.assertMatchesExpected(recs)
        XCTAssertFalse(try XCTUnwrap(recs["model.lin.weight_t"]).isContiguous)
        XCTAssertFalse(try XCTUnwrap(recs["model.emb.col"]).isContiguous)
        XCTAssertTrue(recs["model.emb.rows"]?.storage === recs["model.emb.weight"]?.storage, "views share one storage")
    }

    func testInertGlobalsAndHyperParameters() throws {
        let ck = try TorchCheckpoint(url: Fixtures.url("lightning.ckpt"))
        let top = try XCTUnwrap(ck.root.dictValue)
        let callbacks = try XCTUnwrap(top["callbacks"]?.dictValue)
        guard case .global(let m, let n) = callbacks.keys[0] else { return XCTFail("callback key not a global") }
        XCTAssertEqual("\(m).\(n)", "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint")
        XCTAssertEqual(callbacks.values[0].dictValue?["dirpath"]?.stringValue, "/logs")
        let hp = try XCTUnwrap(top["hparams"]?.dictValue)
        guard case .float(let lr)? = hp["lr"] else { return XCTFail("lr") }
        XCTAssertEqual(lr, 1e-4)
        XCTAssertEqual(hp["neg"]?.intValue, -(1 << 33))
        guard case .bigInt(let big)? = hp["big"] else { return XCTFail("big") }
        XCTAssertEqual(Array(big), [0, 0, 0, 0, 0, 0, 0, 0, 64])   // 2**70
        guard case .bytes(let raw)? = hp["raw"] else { return XCTFail("raw") }
        XCTAssertEqual(Array(raw), [0, 1])
        XCTAssertEqual(hp["size"]?.sequenceItems?.compactMap(\.intValue), [2, 3])
        XCTAssertEqual(hp["set"]?.sequenceItems?.compactMap(\.intValue), [1])
        XCTAssertNotNil(ck.stateDict?.state, "OrderedDict _metadata applied by BUILD")
    }

    func testProtocol4AndDeflatedAndBareStateDict() throws {
        for f in ["lightning_p4.ckpt", "lightning_deflated.ckpt", "lightning_zip64.ckpt", "state_dict.pt"] {
            let ck = try TorchCheckpoint(url: Fixtures.url(f))
            let recs = try ck.records()
            XCTAssertEqual(Set(recs.keys), Set(Fixtures.expected.tensors.keys), f)
            try Fixtures.assertMatchesExpected(recs)
        }
        let z = try ZipArchive(url: Fixtures.url("lightning_deflated.ckpt"))
        XCTAssertTrue(z.entries.contains { $0.method == 8 })
    }

    func testRecordInertPolicyNeverCalls() throws {
        XCTAssertThrowsError(try TorchCheckpoint(url: Fixtures.url("corpus/pkl_os_system.ckpt")))
        let ck = try TorchCheckpoint(url: Fixtures.url("corpus/pkl_os_system.ckpt"), policy: .recordInert)
        guard case .object(let o) = ck.root else { return XCTFail("expected inert object") }
        XCTAssertEqual("\(o.module).\(o.name)", "posix.system")
        XCTAssertEqual(o.args.first?.stringValue, "echo pwned")
    }
}
