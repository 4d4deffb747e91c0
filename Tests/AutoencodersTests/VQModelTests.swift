// Parity of VQModel / VectorQuantizer with diffusers (taming VectorQuantizer2): pre-quantization latent, nearest codes,
// quantized latents, commitment loss, decode with and without quantization, remap with every unknown-index policy.
@testable import Autoencoders
import Foundation
import NeuralNetwork
import TensorCore
import XCTest

final class VQModelTests: XCTestCase {
    func testVQf4Parity() throws {
        let m = try VQModel.load(folder: fixtures.appendingPathComponent("vq_f4"))
        let ref = try referenceTensors("vq_f4")
        let h = try m.encode(try ref.get("x"))
        assertParity(h, try ref.get("h"), "vq_f4 encode (pre-quant latent)")
        let hRef = try ref.get("h")
        let q = try m.quantize(hRef)
        XCTAssertEqual(q.indices, try ref.get("indices").toArray().map { Int($0) })
        XCTAssertEqual(q.indexShape, [16])
        assertParity(q.quantized, try ref.get("quantized"), "vq_f4 quantized")
        assertParity(q.loss.reshaped([1]), try ref.get("loss"), "vq_f4 commitment loss")
        assertParity(try m.decode(hRef), try ref.get("decoded"), "vq_f4 decode")
        assertParity(try m.decode(hRef, forceNotQuantize: true), try ref.get("decoded_not_quantized"), "vq_f4 decode force_not_quantize")
        // Decoding from indices (lookup_from_codebook) gives the quantized decode.
        assertParity(try m.decode(indices: q.indices, shape: [1, 4, 4, 3]), try ref.get("decoded"), "vq_f4 decode from indices")
    }

    func testRemapPolicies() throws {
        let m = try VQModel.load(folder: fixtures.appendingPathComponent("vq_f4"))
        let ref = try referenceTensors("vq_f4")
        let used = try ref.get("used").toArray().map { Int($0) }
        let h = try ref.get("h")
        let cases: [(String, VectorQuantizer.UnknownIndex)] = [("extra", .extra), ("random", .random), ("7", .index(7))]
        for (name, policy) in cases {
            let q = try VectorQuantizer(numEmbeddings: 32, embedDim: 3, remap: used, unknownIndex: policy, saneIndexShape: true, legacy: false)
            q.embedding.weight.assign(m.quantize.embedding.weight)
            let out = try q(h, generator: TorchGenerator(seed: 11))
            XCTAssertEqual(out.indices, try ref.get("remap_\(name)").toArray().map { Int($0) }, name)
            XCTAssertEqual(out.indexShape, [1, 4, 4])
            assertParity(out.loss.reshaped([1]), try ref.get("remap_loss"), "vq remap loss (legacy false)")
            if name == "extra" {
                XCTAssertEqual(q.reEmbed, 21)
                XCTAssertEqual(try q.unmapToAll(out.indices), try ref.get("remap_extra_unmapped").toArray().map { Int($0) })
            }
        }
        XCTAssertThrowsError(try VectorQuantizer(numEmbeddings: 4, embedDim: 2, remap: [0, -1])) { XCTAssertTrue("\($0)".contains("-1"), "\($0)") }
    }

    /// Straight-through estimator: d(sum of quantized)/dz is 1 everywhere; the codebook receives the beta-weighted term.
    func testStraightThroughGradient() throws {
        let q = try VectorQuantizer(numEmbeddings: 4, embedDim: 2, beta: 0.25)
        q.embedding.weight.assign(Tensor([0, 0, 1, 0, 0, 1, 1, 1], shape: [4, 2]))
        let z = Tensor([0.1, 0.9, 0.2, 0.7, 0.05, 0.95, 0.8, 0.3], shape: [1, 2, 2, 2]).requiringGrad()
        let out = try q(z)
        XCTAssertEqual(out.indices, [0, 3, 2, 1])
        (out.quantized.sum() + out.loss).backward()
        let zq = out.quantized.detach().toArray(), zz = z.detach().toArray()
        // d loss / d z = 2 (z - zq) / N (legacy: the unweighted commitment term), plus 1 from the straight-through sum.
        let g = try XCTUnwrap(z.grad).toArray()
        for i in g.indices { XCTAssertEqual(g[i], 1 + 2 * (zz[i] - zq[i]) / 8, accuracy: 1e-6) }
        XCTAssertNotNil(q.embedding.weight.grad)
    }

    func testConfig() throws {
        let c = try VQModelConfig.load(fixtures.appendingPathComponent("vq_f4/config.json"))
        XCTAssertEqual(c.numVqEmbeddings, 32)
        XCTAssertEqual(c.embedDim, 3)
        var s = c; s.normType = "spatial"
        XCTAssertThrowsError(try VQModel(config: s)) { XCTAssertTrue("\($0)".contains("spatial"), "\($0)") }
        let (model, report) = try FirstStageModel.load(folder: fixtures.appendingPathComponent("vq_f4"))
        guard case .vq = model else { return XCTFail("expected a VQModel from _class_name") }
        XCTAssertTrue(report.unexpected.isEmpty)
    }
}
