// Every file of the committed corpus of malformed/malicious checkpoints must throw a clear error.
import Foundation
import XCTest
@testable import Checkpoints

final class CorpusTests: XCTestCase {
    func testEveryCorpusFileThrowsItsError() throws {
        let manifest = Fixtures.corpusManifest()
        XCTAssertGreaterThan(manifest.count, 40)
        for (file, needle) in manifest.sorted(by: { $0.key < $1.key }) {
            do {
                let c = try CheckpointFile.open(Fixtures.url("corpus/" + file))
                for r in c.tensors.values where r.elementCount < 1 << 20 { _ = try r.rawData() }
                XCTFail("\(file): opened without error")
            } catch {
                let msg = "\(error)"
                XCTAssertTrue(error is CheckpointError, "\(file): unexpected error type \(error)")
                XCTAssertTrue(needle.isEmpty || msg.contains(needle), "\(file): message \"\(msg)\" lacks \"\(needle)\"")
            }
        }
    }
}
