import Foundation
import TensorCore
import XCTest
@testable import Training

// The bucket logic of Training/GradientBuckets.swift in one process, against a communicator that plays two ranks
// holding the same gradients (a sum doubles every value): layout, start order, start during backward, and the
// overlapped and after-backward paths giving the same bits. The real two-rank runs are in DataParallelOverlapTests.
final class GradientBucketTests: XCTestCase {
    /// Rank 0 of two identical ranks. Records the size of each bucket started.
    final class TwinRanks: Communicator {
        var rank: Int { 0 }
        var size: Int { 2 }
        var started: [Int] = []
        func allReduceSum(_ buffer: UnsafeMutableBufferPointer<Float>) throws { for i in buffer.indices { buffer[i] *= 2 } }
        func allReduceSum(_ buffer: UnsafeMutableBufferPointer<Double>) throws { for i in buffer.indices { buffer[i] *= 2 } }
        func startAllReduceSum(_ buffer: UnsafeMutableBufferPointer<Float>) throws -> PendingAllReduce {
            started.append(buffer.count)
            return Deferred(buffer)
        }
        func broadcast(_ buffer: UnsafeMutableRawBufferPointer, root: Int) throws {}
        func barrier() throws {}
        func abort(code: Int32) -> Never { fatalError("abort \(code)") }
        func finalize() {}

        /// Completes (doubles its buffer) at the first test or wait.
        final class Deferred: PendingAllReduce {
            var buffer: UnsafeMutableBufferPointer<Float>?
            init(_ b: UnsafeMutableBufferPointer<Float>) { buffer = b }
            func test() throws -> Bool { try wait(); return true }
            func wait() throws {
                guard let b = buffer else { return }
                for i in b.indices { b[i] *= 2 }
                buffer = nil
            }
        }
    }

    /// A chain of four linear layers (weights 6x6 = 36 values, biases 6) and an unused parameter at the end.
    func model() -> [Tensor] {
        let g = TorchGenerator(seed: 4)
        var p: [Tensor] = []
        for _ in 0..<4 { p += [Tensor.randn([6, 6], generator: g).requiringGrad(), Tensor.randn([6], generator: g).requiringGrad()] }
        return p + [Tensor.randn([5], generator: g).requiringGrad()]
    }

    func loss(_ p: [Tensor]) -> Tensor {
        var h = Tensor.randn([3, 6], generator: TorchGenerator(seed: 9))
        for l in 0..<4 { h = linear(h, p[2 * l], p[2 * l + 1]).tanh() }
        return (h * h).mean()
    }

    func testOverlapStartsBucketsInOrderDuringBackwardAndGivesTheSameBits() throws {
        let reference = model()
        loss(reference).backward()
        var results: [[[Float]?]] = []
        for overlap in [true, false] {
            let comm = TwinRanks()
            // 60 values per bucket, filled greedily in reverse parameter order: [unused 5, b3 6, W3 36, b2 6],
            // [W2 36, b1 6], [W1 36, b0 6], [W0 36].
            let averager = GradientAverager(communicator: comm, bucketBytes: 60 * 4, overlapsBackward: overlap)
            let p = model()
            try averager.backward(loss(p), parameters: p)
            XCTAssertEqual(comm.started, [53, 42, 42, 36], "buckets of the reverse parameter order, up to 60 values")
            XCTAssertEqual(averager.lastBuckets, 4)
            XCTAssertEqual(averager.lastElements, 4 * 42 + 5)
            // With overlap every bucket starts inside backward (the last one at the first layer's gradient), the first
            // one although it holds a parameter the loss does not reach: it is marked ready before the pass (DDP's
            // find_unused_parameters), or it would hold back all the others.
            XCTAssertEqual(averager.lastBucketsStartedDuringBackward, overlap ? 4 : 0)
            XCTAssertNil(p.last?.grad, "a parameter no rank used keeps no gradient")
            results.append(p.map { $0.grad?.toArray() })
        }
        XCTAssertEqual(results[0].compactMap { $0 }, results[1].compactMap { $0 })
        // Two identical ranks average to this process's own gradients, exactly (x * 2 * 0.5).
        XCTAssertEqual(results[0].compactMap { $0 }, reference.compactMap { $0.grad?.toArray() })
    }
}
