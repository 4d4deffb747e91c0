import Foundation
import XCTest
@testable import TensorCore

// oneDNN primitives are cached per shape and created on whichever thread first needs them; the server runs jobs on
// other threads. With oneDNN's default (library) scratchpad, thread-local and sized on the creating thread, a
// primitive that needs scratch executed on another thread crashed (oneDNN 2.6's im2col GEMM convolution at
// LDM_ISA=baseline, i.e. ONEDNN_MAX_CPU_ISA=SSE41; reproduced in C with a conv created on one pthread and executed
// on another). DNNL.attr makes the scratchpad user-managed: each execution passes its own. Here the same
// convolutions run first on this thread, then on a new thread, and must agree; at every ISA level.
final class DNNLScratchpadTests: XCTestCase {
    func testCachedPrimitivesRunOnAnotherThread() throws {
        let g = TorchGenerator(seed: 41)
        var cases: [(Tensor, Tensor, Tensor?, Conv2dOptions)] = []
        for (xs, oc, k, o) in [([1, 16, 24, 24], 24, 3, Conv2dOptions(padding: 1)), ([2, 8, 17, 13], 12, 3, Conv2dOptions(stride: 2, padding: 1)),
                               ([1, 32, 12, 12], 16, 1, Conv2dOptions()), ([1, 16, 10, 10], 16, 3, Conv2dOptions(padding: 1, groups: 4))] {
            cases.append((Tensor.randn(xs, generator: g), Tensor.randn([oc, xs[1] / o.groups, k, k], generator: g), Tensor.randn([oc], generator: g), o))
        }
        let run = { cases.map { c in GradMode.noGrad { Winograd.withDisabled { conv2d(c.0, c.1, c.2, c.3).toArray() } } } }
        let here = run()
        nonisolated(unsafe) var there: [[Float]] = []
        let done = DispatchSemaphore(value: 0)
        let thread = Thread { there = run(); done.signal() }
        thread.stackSize = 8 << 20
        thread.start()
        done.wait()
        XCTAssertEqual(there.count, here.count)
        for (a, b) in zip(here, there) { XCTAssertEqual(a, b) }
        print("DNNLScratchpadTests: \(cases.count) convolutions agree across threads at ISA level \(CPUFeatures.active.name)")
    }
}
