// Mutation fuzzing of all readers. More iterations: LDM_FUZZ_ITERATIONS=100000 LDM_FUZZ_SEED=7 swift test --filter FuzzTests
import Foundation
import XCTest
@testable import Checkpoints

final class FuzzTests: XCTestCase {
    func testMutatedFixturesNeverCrash() throws {
        let env = ProcessInfo.processInfo.environment
        let iterations = env["LDM_FUZZ_ITERATIONS"].flatMap(Int.init) ?? 300
        let seed = env["LDM_FUZZ_SEED"].flatMap(UInt64.init) ?? 1
        let seeds = try ["reference.safetensors", "lightning.ckpt", "lightning_p4.ckpt", "lightning_deflated.ckpt", "state_dict.pt",
                         "legacy/state_dict.pt", "legacy/lightning_p4.ckpt", "legacy/storage_view.pt"]
            .map { try Data(contentsOf: Fixtures.url($0)) }
        for s in seeds { XCTAssertTrue(try Fuzz.exercise(s)) }
        let r = Fuzz.run(iterations: iterations, seed: seed, seeds: seeds)
        XCTAssertEqual(r.iterations, iterations)
        XCTAssertEqual(r.otherErrors, [], "errors that are not CheckpointError")
        XCTAssertGreaterThan(r.rejected, iterations / 10, "mutations should mostly be rejected")
        XCTAssertGreaterThan(r.opened, 0, "some mutations (e.g. in tensor data) still open")
    }

    func testMutationIsDeterministic() {
        var a: UInt64 = 42, b: UInt64 = 42
        let d = Data((0..<100).map { UInt8($0) })
        XCTAssertEqual(Fuzz.mutate(d, rng: &a), Fuzz.mutate(d, rng: &b))
    }
}
