// Tests LCMScheduler, TCDScheduler and Turbo-style trailing-spacing sampling against diffusers 0.42 runs recorded by
// tools/fixtures/few_step_schedulers.py, with SchedulerTests' tolerance (max |swift - reference| <= 1e-5 * scale)
// and its fixture decoding. Noise is drawn from the same seeded TorchGenerator, so the stochastic LCM/TCD re-noising
// is compared draw for draw.
import Foundation
import XCTest
import TensorCore
@testable import Diffusion

final class FewStepSchedulerTests: XCTestCase {
    struct Doc: Decodable {
        let cases: [SchedulerTests.Case]
        let grid_timesteps: [String: [Double]]
    }

    static let doc: Doc? = {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/few_step_schedulers.json")
        return try? JSONDecoder().decode(Doc.self, from: Data(contentsOf: url))
    }()

    func loadDoc() throws -> Doc { try XCTUnwrap(Self.doc, "Fixtures/few_step_schedulers.json missing or malformed") }

    func config(_ c: SchedulerTests.Case) throws -> SchedulerConfig {
        var dict = (c.config.any as? [String: Any]) ?? [:]
        if let extra = c.extra.any as? [String: Any] { dict.merge(extra) { $1 } }
        return try SchedulerConfig.decode(JSONSerialization.data(withJSONObject: dict))
    }

    func assertClose(_ got: [Double], _ want: [Double], _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(got.count, want.count, "\(what): count", file: file, line: line)
        guard got.count == want.count else { return }
        let scale = max(1, want.map(abs).max() ?? 0)
        let err = zip(got, want).map { abs($0 - $1) }.max() ?? 0
        XCTAssertLessThanOrEqual(err, 1e-5 * scale, "\(what): max abs error \(err)", file: file, line: line)
    }

    func assertClose(_ got: [Float], _ want: [Float], _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        assertClose(got.map(Double.init), want.map(Double.init), what, file: file, line: line)
    }

    /// Base64 reference values as latents.
    func latents(_ b64: String) -> Tensor { SchedulerTests.latents(SchedulerTests.floats(b64)) }

    func testFewStepSamplersMatchDiffusers() throws {
        let doc = try loadDoc()
        XCTAssertEqual(doc.cases.count, 13)
        for c in doc.cases {
            let s = try SchedulerFactory.make(c.sampler, config: try config(c), eta: c.eta)
            try s.setTimesteps(c.steps)
            assertClose(s.timesteps, c.timesteps, "\(c.name) timesteps")
            let gen = TorchGenerator(seed: c.seed)
            let noise = gen.normal(count: 128)
            XCTAssertEqual(noise, SchedulerTests.floats(c.init_noise), c.name)
            var x: Tensor
            var start = 0
            if let strength = c.strength {
                start = try s.img2imgStartIndex(strength: strength)
                XCTAssertEqual(start, c.start_index, "\(c.name) img2img start")
                x = s.addNoise(original: latents(try XCTUnwrap(c.clean)), noise: SchedulerTests.latents(noise), stepIndex: start)
                assertClose(x.toArray(), SchedulerTests.floats(try XCTUnwrap(c.noised)), "\(c.name) add_noise")
            } else {
                x = SchedulerTests.latents(noise.map { Float(Double($0) * s.initNoiseSigma) })
            }
            XCTAssertEqual(s.initNoiseSigma, c.init_noise_sigma, accuracy: 1e-5 * max(1, c.init_noise_sigma), c.name)
            XCTAssertEqual(c.outputs.count, s.timesteps.count - start, "\(c.name): number of model evaluations")
            for (k, i) in (start..<min(s.timesteps.count, start + c.outputs.count)).enumerated() {
                let xin = s.scaleModelInput(x, stepIndex: i)
                if k < c.inputs.count { assertClose(xin.toArray(), SchedulerTests.floats(c.inputs[k]), "\(c.name) model input \(k)") }
                x = try s.step(modelOutput: latents(c.outputs[k]), stepIndex: i, sample: x, noise: gen)
                assertClose(x.toArray(), SchedulerTests.floats(c.samples[k]), "\(c.name) sample after step \(k)")
                x = latents(c.samples[k])
            }
        }
    }

    func testConsistencyGridTimesteps() throws {
        let doc = try loadDoc()
        XCTAssertEqual(doc.grid_timesteps.count, 48)
        let sd1 = try config(try XCTUnwrap(doc.cases.first { $0.name == "lcm-sd1-4" }))
        for (key, want) in doc.grid_timesteps {
            let parts = key.split(separator: "/")
            var cfg = sd1
            cfg.originalInferenceSteps = Int(parts[1])
            let s: Scheduler = parts[0] == "LCMScheduler" ? try LCMScheduler(config: cfg) : try TCDScheduler(config: cfg)
            try s.setTimesteps(Int(parts[2])!)
            XCTAssertEqual(s.timesteps, want, key)
        }
    }

    func testConsistencyErrors() throws {
        var cfg = SchedulerConfig()
        let lcm = try LCMScheduler(config: cfg)
        XCTAssertThrowsError(try lcm.setTimesteps(51)) // more than original_inference_steps
        let zero = SchedulerTests.latents([0])
        XCTAssertThrowsError(try lcm.step(modelOutput: zero, stepIndex: 0, sample: zero, noise: nil)) // before setTimesteps
        try lcm.setTimesteps(2)
        XCTAssertThrowsError(try lcm.step(modelOutput: zero, stepIndex: 0, sample: zero, noise: nil)) // re-noise needs a generator
        XCTAssertNoThrow(try lcm.step(modelOutput: zero, stepIndex: 1, sample: zero, noise: nil)) // the last step does not
        cfg.originalInferenceSteps = 2000
        XCTAssertThrowsError(try LCMScheduler(config: cfg))
        // gamma (the pipelines' eta) outside [0, 1] is refused when the scheduler is built, also through the factory
        XCTAssertThrowsError(try TCDScheduler(config: SchedulerConfig(), gamma: 1.5))
        XCTAssertThrowsError(try SchedulerFactory.make("tcd", config: SchedulerConfig(), eta: 1.5))
        XCTAssertNoThrow(try SchedulerFactory.make("tcd", config: SchedulerConfig(), eta: 1))
    }
}
