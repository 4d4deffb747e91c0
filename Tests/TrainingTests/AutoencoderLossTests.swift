import Autoencoders
import Checkpoints
import Foundation
import NeuralNetwork
import TensorCore
import XCTest
@testable import Training

// Parity with taming's LPIPS / NLayerDiscriminator and CompVis' LPIPSWithDiscriminator / VQLPIPSWithDiscriminator
// (fixtures: tools/fixtures/autoencoder_loss.py). The VGG16 weights of the fixture are seeded random values that the
// torch-compatible generator regenerates here; the lin layers are the lpips package's, stored in the fixture.

/// Files written once per test run: torchvision-layout vgg16 weights (+ an ImageNet classifier key) and the lin layers.
private final class LPIPSFiles {
    nonisolated(unsafe) static var shared: LPIPSFiles?
    let dir: URL, vgg: URL, linear: URL
    let fixture: [String: Tensor]

    static func get() throws -> LPIPSFiles {
        if let s = shared { return s }
        let s = try LPIPSFiles(); shared = s; return s
    }

    private init() throws {
        fixture = try fixtureTensors("autoencoder_loss.safetensors")
        dir = try tempDirectory("lpips")
        vgg = dir.appendingPathComponent("vgg16.safetensors"); linear = dir.appendingPathComponent("vgg_lin.safetensors")
        // The fixture's VGG: per conv in `features` order, randn(weight) * sqrt(2 / fan_in), then randn(bias) * 0.01.
        let g = TorchGenerator(seed: 1234)
        var entries: [SafeTensorsEntry] = []
        for c in LPIPS.vggConvs {
            let scale = Float((2.0 / Double(c.inChannels * 9)).squareRoot())
            let w = g.normal(count: c.outChannels * c.inChannels * 9).map { $0 * scale }
            let b = g.normal(count: c.outChannels).map { $0 * Float(0.01) }
            entries.append(Self.entry("features.\(c.index).weight", w, [c.outChannels, c.inChannels, 3, 3]))
            entries.append(Self.entry("features.\(c.index).bias", b, [c.outChannels]))
        }
        entries.append(Self.entry("classifier.6.bias", [Float](repeating: 0, count: 10), [10]))
        try SafeTensors.write(entries, to: vgg)
        try SafeTensors.write(linEntries(), to: linear)
    }

    func linEntries(dropping: String? = nil, adding: String? = nil) -> [SafeTensorsEntry] {
        var out = (0..<5).map { k -> SafeTensorsEntry in
            let t = fixture["lin\(k).model.1.weight"]!
            return Self.entry("lin\(k).model.1.weight", t.toArray(), t.shape)
        }.filter { $0.name != dropping }
        if let adding { out.append(Self.entry(adding, [1, 2], [2])) }
        return out
    }

    static func entry(_ name: String, _ v: [Float], _ shape: [Int]) -> SafeTensorsEntry {
        SafeTensorsEntry(name: name, dtype: .F32, shape: shape, bytes: v.withUnsafeBufferPointer { Data(buffer: $0) })
    }
}

final class AutoencoderLossTests: XCTestCase {
    private static var lpipsModel: LPIPS?

    private func lpips() throws -> (LPIPS, [String: Tensor]) {
        let files = try LPIPSFiles.get()
        if let m = Self.lpipsModel { return (m, files.fixture) }
        let m = try LPIPS(vgg: files.vgg, linear: files.linear)
        Self.lpipsModel = m
        return (m, files.fixture)
    }

    func testLPIPSMatchesReference() throws {
        let (model, f) = try lpips()
        let sd = Dictionary(uniqueKeysWithValues: model.namedParameters)
        assertClose(sd["net.slice1.0.weight"]!.narrow(0, 0, 2).toArray(), f["vgg_check.net.slice1.0.weight"]!.toArray(), tol: 1e-6, "vgg conv0")
        assertClose(sd["net.slice5.28.bias"]!.narrow(0, 0, 16).toArray(), f["vgg_check.net.slice5.28.bias"]!.toArray(), tol: 1e-6, "vgg conv28 bias")
        XCTAssertTrue(model.namedParameters.allSatisfy { !$0.1.requiresGrad })
        let y = f["y"]!.requiringGrad()
        let v = try model(f["x"]!, y)
        XCTAssertEqual(v.shape, [2, 1, 1, 1])
        assertClose(v.toArray(), f["lpips"]!.toArray(), tol: 1e-4, "lpips")
        v.sum().backward()
        assertClose(y.grad!.toArray(), f["lpips_grad_y"]!.toArray(), tol: 1e-4, "lpips grad")
        XCTAssertTrue(model.namedParameters.allSatisfy { $0.1.grad == nil })
    }

    /// lpips_lin straight from the lpips package: its weights/v0.1/vgg.pth is a legacy (non-zip) torch file. The fixture
    /// (tools/fixtures/legacy_torch.py) is that file's pickles with seeded weights; LDM_LPIPS_VGG_PTH may name the real
    /// file, whose lin layers must be the reference fixture's (lpips' own) bit for bit, giving the reference LPIPS.
    func testLPIPSLinearLayersFromTheLPIPSPackagesLegacyFile() throws {
        let files = try LPIPSFiles.get()
        let layout = fixturesURL.appendingPathComponent("lpips_vgg_layout.pth")
        let m = try LPIPS(vgg: files.vgg, linear: layout)
        let records = try CheckpointFile.open(layout).tensors
        for k in 0..<5 {
            XCTAssertEqual(m.lins[k].weight.toArray(), try XCTUnwrap(records["lin\(k).model.1.weight"]).floats(), "lin\(k)")
        }
        guard let path = ProcessInfo.processInfo.environment["LDM_LPIPS_VGG_PTH"] else { return }
        let real = try LPIPS(vgg: files.vgg, linear: URL(fileURLWithPath: path))
        for k in 0..<5 {
            XCTAssertEqual(real.lins[k].weight.toArray(), files.fixture["lin\(k).model.1.weight"]!.toArray(), "real lin\(k)")
        }
        let v = try real(files.fixture["x"]!, files.fixture["y"]!)
        assertClose(v.toArray(), files.fixture["lpips"]!.toArray(), tol: 1e-4, "lpips with the real vgg.pth")
    }

    func testLPIPSLoadingIsStrictAndCombinedFilesRoundTrip() throws {
        let files = try LPIPSFiles.get()
        let missing = files.dir.appendingPathComponent("missing.safetensors")
        try SafeTensors.write(files.linEntries(dropping: "lin3.model.1.weight"), to: missing)
        XCTAssertThrowsError(try LPIPS(vgg: files.vgg, linear: missing)) { e in
            XCTAssertTrue("\(e)".contains("missing (1): lin3.model.1.weight"), "\(e)")
        }
        let extra = files.dir.appendingPathComponent("extra.safetensors")
        try SafeTensors.write(files.linEntries(adding: "lin5.model.1.weight"), to: extra)
        XCTAssertThrowsError(try LPIPS(vgg: files.vgg, linear: extra)) { e in
            XCTAssertTrue("\(e)".contains("linear: lin5.model.1.weight"), "\(e)")
        }
        // One file in taming's LPIPS state_dict layout (what Module.save writes), with the ScalingLayer buffers.
        let (model, f) = try lpips()
        let combined = files.dir.appendingPathComponent("lpips.safetensors")
        try model.save(to: combined)
        let again = try LPIPS(combined: combined)
        let v = try again(f["x"]!, f["y"]!)
        assertClose(v.toArray(), f["lpips"]!.toArray(), tol: 1e-4, "lpips from the combined file")
        var records = try CheckpointFile.open(combined).tensors
        let extraFile = files.dir.appendingPathComponent("more.safetensors")
        try SafeTensors.write([LPIPSFiles.entry("scaling_layer.shift", LPIPS.shift, [1, 3, 1, 1]),
                               LPIPSFiles.entry("net.slice6.30.weight", [0], [1])], to: extraFile)
        let shift = try CheckpointFile.open(extraFile).tensors
        records["scaling_layer.shift"] = shift["scaling_layer.shift"]
        XCTAssertNoThrow(try LPIPS().load(combined: records))
        records["net.slice6.30.weight"] = shift["net.slice6.30.weight"]
        records["net.slice2.7.bias"] = nil
        XCTAssertThrowsError(try LPIPS().load(combined: records)) { e in
            XCTAssertTrue("\(e)".contains("net.slice6.30.weight") && "\(e)".contains("net.slice2.7.bias"), "\(e)")
        }
    }

    func testDiscriminatorInitialisationMatchesTorch() throws {
        let f = try fixtureTensors("autoencoder_loss.safetensors")
        let disc = NLayerDiscriminator(inputChannels: 3, ndf: 8, nLayers: 2, generator: TorchGenerator(seed: 7))
        XCTAssertEqual(disc.namedParameters.map(\.0).filter { !$0.hasSuffix("num_batches_tracked") },
                       f.keys.filter { $0.hasPrefix("disc_init.") }.map { String($0.dropFirst(10)) }.sorted { a, b in
                           disc.namedParameters.firstIndex { $0.0 == a }! < disc.namedParameters.firstIndex { $0.0 == b }! })
        for (name, p) in disc.namedParameters where !name.hasSuffix("num_batches_tracked") {
            assertClose(p.toArray(), f["disc_init.\(name)"]!.toArray(), tol: 1e-6, "init \(name)")
        }
    }

    /// The fixture's discriminator (ndf 8, 2 layers) as a PatchGANLoss with disc_start 5, disc_weight 0.5.
    private func gan(_ f: [String: Tensor], _ loss: PatchGANLoss.DiscLoss = .hinge) -> PatchGANLoss {
        let disc = NLayerDiscriminator(inputChannels: 3, ndf: 8, nLayers: 2)
        for (name, p) in disc.namedParameters { if let t = f["disc_init.\(name)"] { p.assign(t) } }
        return PatchGANLoss(discriminator: disc, discStart: 5, discFactor: 1, discWeight: 0.5, discLoss: loss)
    }

    /// The reconstructions come from a "decoder.conv_out" (last_layer) over a leaf feature map.
    private func reconstruct(_ f: [String: Tensor]) -> (feat: Tensor, w: Tensor, rec: Tensor) {
        let feat = Tensor(f["feat"]!.toArray(), shape: f["feat"]!.shape).requiringGrad()
        let w = Tensor(f["last_w"]!.toArray(), shape: f["last_w"]!.shape).requiringGrad()
        return (feat, w, conv2d(feat, w, f["last_b"]!, Conv2dOptions(padding: 1)))
    }

    private func checkLog(_ log: [String: Float], _ f: [String: Tensor], _ prefix: String, _ keys: [String]) {
        for k in keys {
            guard let want = f["\(prefix).log.\(k)"]?.item else { XCTFail("fixture lacks \(prefix).log.\(k)"); continue }
            guard let got = log[k] else { XCTFail("\(prefix): log lacks \(k)"); continue }
            assertClose([got], [want], tol: 1e-4, "\(prefix) log \(k)")
        }
    }

    func testKLLossBeforeAndAfterDiscStart() throws {
        let (perceptual, f) = try lpips()
        for (name, step) in [("kl_before", 0), ("kl_after", 10)] {
            let gan = gan(f)
            let loss = FirstStageLoss(kind: .kl(klWeight: 0.5, logvarInit: 0.25), perceptual: perceptual, adversarial: gan)
            let (feat, w, rec) = reconstruct(f)
            let moments = Tensor(f["moments"]!.toArray(), shape: f["moments"]!.shape).requiringGrad()
            let (total, log) = try loss.autoencoderLoss(inputs: f["x"]!, reconstructions: rec,
                                                        posterior: DiagonalGaussianDistribution(moments), globalStep: step, lastLayer: w)
            assertClose([total.item], f["\(name).loss"]!.toArray(), tol: 1e-4, "\(name) loss")
            checkLog(log, f, name, ["total_loss", "kl_loss", "nll_loss", "rec_loss", "logvar", "disc_factor"]
                     + (step >= 5 ? ["d_weight", "g_loss"] : []))
            total.backward()
            assertClose(feat.grad!.toArray(), f["\(name).grad_feat"]!.toArray(), tol: 1e-4, "\(name) d/d feat")
            assertClose(w.grad!.toArray(), f["\(name).grad_last_w"]!.toArray(), tol: 1e-4, "\(name) d/d last_layer")
            assertClose(moments.grad!.toArray(), f["\(name).grad_moments"]!.toArray(), tol: 1e-4, "\(name) d/d moments")
            // toggle_optimizer: the autoencoder's step leaves the discriminator without gradients.
            XCTAssertTrue(gan.parameters.allSatisfy { $0.1.grad == nil })

            let d = try gan.discriminatorLoss(inputs: f["x"]!, reconstructions: rec, globalStep: step)
            guard step >= 5 else { XCTAssertNil(d); continue }
            guard let (dLoss, dlog) = d else { XCTFail("no discriminator loss after disc_start"); continue }
            assertClose([dLoss.item], f["\(name).d_loss"]!.toArray(), tol: 1e-4, "\(name) d_loss")
            checkLog(dlog, f, name + ".d", ["disc_loss", "logits_real", "logits_fake"])
            dLoss.backward()
            XCTAssertEqual(gan.parameters.count, 10)
            for (pname, p) in gan.discriminator.trainableParameters {
                assertClose(p.grad!.toArray(), f["\(name).d_grad.\(pname)"]!.toArray(), tol: 1e-4, "\(name) d/d \(pname)")
            }
            // BatchNorm running statistics after the three training-mode passes (generator, real, fake).
            for (pname, p) in gan.discriminator.namedParameters where pname.contains("running") {
                assertClose(p.toArray(), f["\(name).d_state.\(pname)"]!.toArray(), tol: 1e-4, "\(name) \(pname)")
            }
        }
    }

    func testVanillaDiscriminatorLoss() throws {
        let f = try fixtureTensors("autoencoder_loss.safetensors")
        let (_, _, rec) = reconstruct(f)
        let gan = gan(f, .vanilla)
        let (d, log) = try XCTUnwrap(try gan.discriminatorLoss(inputs: f["x"]!, reconstructions: rec, globalStep: 10))
        assertClose([d.item], f["kl_vanilla.d_loss"]!.toArray(), tol: 1e-4, "vanilla d_loss")
        checkLog(log, f, "kl_vanilla.d", ["disc_loss", "logits_real", "logits_fake"])
    }

    func testVQLossL1AndL2() throws {
        let (perceptual, f) = try lpips()
        for (name, pixel) in [("vq_l1", LossType.l1), ("vq_l2", LossType.l2)] {
            let loss = FirstStageLoss(kind: .vq(codebookWeight: 1, pixelLoss: pixel), perceptual: perceptual, adversarial: gan(f))
            let (feat, w, rec) = reconstruct(f)
            let codebook = Tensor(scalar: 0.3).requiringGrad()
            let (total, log) = try loss.autoencoderLoss(inputs: f["x"]!, reconstructions: rec, codebookLoss: codebook,
                                                        globalStep: 10, lastLayer: w)
            assertClose([total.item], f["\(name).loss"]!.toArray(), tol: 1e-4, "\(name) loss")
            checkLog(log, f, name, ["total_loss", "quant_loss", "nll_loss", "rec_loss", "p_loss", "d_weight", "disc_factor", "g_loss"])
            total.backward()
            assertClose(feat.grad!.toArray(), f["\(name).grad_feat"]!.toArray(), tol: 1e-4, "\(name) d/d feat")
            assertClose(w.grad!.toArray(), f["\(name).grad_last_w"]!.toArray(), tol: 1e-4, "\(name) d/d last_layer")
            assertClose(codebook.grad!.toArray(), f["\(name).grad_codebook"]!.toArray(), tol: 1e-4, "\(name) d/d codebook")
        }
    }

    func testPatchGANLossFromConfigValues() throws {
        XCTAssertThrowsError(try PatchGANLoss(discStart: 0, discLoss: "wasserstein", generator: TorchGenerator(seed: 0)))
        let g = try PatchGANLoss(discStart: 50001, discWeight: 0.5, discFactor: 1, discInChannels: 3, discNumLayers: 3,
                                 discNdf: 64, discLoss: "hinge", generator: TorchGenerator(seed: 0))
        XCTAssertEqual(g.discriminator.namedParameters.map(\.0).prefix(4), ["main.0.weight", "main.0.bias", "main.2.weight", "main.3.weight"])
        XCTAssertEqual(g.discriminator.namedParameters.last!.0, "main.11.bias")
        XCTAssertEqual(g.parameters.count, 13)
        // Before disc_start the adversarial term is a constant zero and there is no discriminator step.
        let w = Tensor.ones([3, 3, 1, 1]).requiringGrad()
        let rec = conv2d(Tensor.full(0.1, [1, 3, 32, 32]), w)
        let (term, log) = try g.generatorTerm(reconstructions: rec, nllLoss: rec.abs().mean(), lastLayer: w, globalStep: 0)
        XCTAssertEqual(term.item, 0); XCTAssertEqual(log["disc_factor"], 0)
        XCTAssertNil(try g.discriminatorLoss(inputs: rec, reconstructions: rec, globalStep: 50000))
    }
}
