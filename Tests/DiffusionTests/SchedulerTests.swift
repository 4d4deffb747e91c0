// Tests the Diffusion schedulers against diffusers 0.42 / CompVis stable-diffusion runs recorded by
// tools/fixtures/schedulers.py. Tolerance (stated once): every compared array must satisfy
// max |swift - reference| <= 1e-5 * max(1, max |reference|). The references compute in float32 torch ops while
// Swift accumulates per element in Double, so only float32 rounding differences remain.
import Foundation
import XCTest
import TensorCore
@testable import Diffusion

final class SchedulerTests: XCTestCase {
    struct Case: Decodable {
        let name: String, sampler: String, steps: Int, seed: UInt64
        let config: JSONValue, extra: JSONValue
        let eta: Double?, strength: Double?, discretize: String?
        let timesteps: [Double], sigmas: [Double]?, init_noise_sigma: Double, start_index: Int
        let init_noise: String, clean: String?, noised: String?
        let inputs: [String], outputs: [String], samples: [String]
    }
    struct Doc: Decodable {
        let cases: [Case]
        let spacing_timesteps: [String: [Double]]
        let alphas_cumprod: [String: String]
    }

    /// Raw JSON, kept to re-encode config dictionaries.
    enum JSONValue: Decodable {
        case object([String: JSONValue]), array([JSONValue]), string(String), number(Double), bool(Bool), null
        init(from decoder: Decoder) throws {
            let c = try decoder.singleValueContainer()
            if c.decodeNil() { self = .null } else if let b = try? c.decode(Bool.self) { self = .bool(b) }
            else if let n = try? c.decode(Double.self) { self = .number(n) }
            else if let s = try? c.decode(String.self) { self = .string(s) }
            else if let a = try? c.decode([JSONValue].self) { self = .array(a) }
            else { self = .object(try c.decode([String: JSONValue].self)) }
        }
        var any: Any {
            switch self {
            case let .object(o): return o.mapValues { $0.any }
            case let .array(a): return a.map { $0.any }
            case let .string(s): return s
            case let .number(n): return n == n.rounded() && abs(n) < 1e15 ? Int(n) as Any : n as Any
            case let .bool(b): return b
            case .null: return NSNull()
            }
        }
    }

    static let doc: Doc? = {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/schedulers.json")
        return try? JSONDecoder().decode(Doc.self, from: Data(contentsOf: url))
    }()

    func loadDoc() throws -> Doc { try XCTUnwrap(Self.doc, "Fixtures/schedulers.json missing or malformed") }

    static func floats(_ b64: String) -> [Float] {
        guard let d = Data(base64Encoded: b64) else { return [] }
        let b = [UInt8](d)
        return stride(from: 0, to: b.count, by: 4).map { i in
            Float(bitPattern: UInt32(b[i]) | UInt32(b[i + 1]) << 8 | UInt32(b[i + 2]) << 16 | UInt32(b[i + 3]) << 24)
        }
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

    func config(_ c: Case) throws -> SchedulerConfig {
        var dict = (c.config.any as? [String: Any]) ?? [:]
        if let extra = c.extra.any as? [String: Any] { dict.merge(extra) { $1 } }
        return try SchedulerConfig.decode(JSONSerialization.data(withJSONObject: dict))
    }

    func makeScheduler(_ c: Case) throws -> Scheduler {
        let cfg = try config(c)
        if c.sampler.hasPrefix("compvis-") {
            return try CompVisSampler(config: cfg, method: c.sampler == "compvis-plms" ? .plms : .ddim,
                                      discretization: c.discretize == "quad" ? .quad : .uniform, eta: c.eta ?? 0)
        }
        let extraKeys = (c.extra.any as? [String: Any])?.keys.map { $0 } ?? []
        if extraKeys.contains("solver_order") || extraKeys.contains("use_karras_sigmas") {
            // the factory pins these; build the class directly as `Class.from_config(config, **extra)`
            let full = cfg
            switch c.sampler {
            case "dpm++2m": return try DPMSolverMultistepScheduler(config: full)
            case "euler": return try EulerDiscreteScheduler(config: full)
            case "heun": return try HeunDiscreteScheduler(config: full)
            default: XCTFail("no direct class for \(c.sampler)")
            }
        }
        return try SchedulerFactory.make(c.sampler, config: cfg, eta: c.eta)
    }

    /// The reference's flat values as latents.
    static func latents(_ values: [Float]) -> Tensor { Tensor(values, shape: [values.count]) }

    func testSchedulersMatchReference() throws {
        let doc = try loadDoc()
        XCTAssertGreaterThanOrEqual(doc.cases.count, 30)
        for c in doc.cases {
            let s = try makeScheduler(c)
            try s.setTimesteps(c.steps)
            assertClose(s.timesteps, c.timesteps, "\(c.name) timesteps")
            if let sig = c.sigmas, let ss = s as? SigmaScheduler { assertClose(ss.sigmas, sig, "\(c.name) sigmas") }
            XCTAssertEqual(s.initNoiseSigma, c.init_noise_sigma, accuracy: 1e-5 * max(1, c.init_noise_sigma), c.name)
            let gen = TorchGenerator(seed: c.seed)
            let noise = gen.normal(count: 128)
            XCTAssertEqual(noise, Self.floats(c.init_noise), "\(c.name): initial latents from TorchGenerator")
            var x: Tensor
            var start = 0
            if let strength = c.strength {
                start = try s.img2imgStartIndex(strength: strength)
                XCTAssertEqual(start, c.start_index, "\(c.name) img2img start")
                x = s.addNoise(original: Self.latents(Self.floats(try XCTUnwrap(c.clean))), noise: Self.latents(noise), stepIndex: start)
                assertClose(x.toArray(), Self.floats(try XCTUnwrap(c.noised)), "\(c.name) add_noise")
            } else {
                x = Self.latents(noise.map { Float(Double($0) * s.initNoiseSigma) })
            }
            XCTAssertEqual(c.outputs.count, s.timesteps.count - start, "\(c.name): number of model evaluations")
            for (k, i) in (start..<min(s.timesteps.count, start + c.outputs.count)).enumerated() {
                let xin = s.scaleModelInput(x, stepIndex: i)
                if k < c.inputs.count { assertClose(xin.toArray(), Self.floats(c.inputs[k]), "\(c.name) model input \(k)") }
                x = try s.step(modelOutput: Self.latents(Self.floats(c.outputs[k])), stepIndex: i, sample: x, noise: gen)
                assertClose(x.toArray(), Self.floats(c.samples[k]), "\(c.name) sample after step \(k)")
                // continue from the reference trajectory so each step is checked on its own inputs
                x = Self.latents(Self.floats(c.samples[k]))
            }
        }
    }

    /// 50-step timesteps of every spacing for each scheduler class, against diffusers.
    func testTimestepSpacings() throws {
        let doc = try loadDoc()
        let sd1 = try config(try XCTUnwrap(doc.cases.first { $0.name == "ddim-sd1" }))
        XCTAssertEqual(doc.spacing_timesteps.count, 21)
        for (key, want) in doc.spacing_timesteps {
            let parts = key.split(separator: "/").map(String.init)
            var cfg = sd1
            cfg.timestepSpacing = parts[1]
            let s = try SchedulerFactory.make(parts[0], config: cfg)
            try s.setTimesteps(50)
            XCTAssertEqual(s.timesteps.count, want.count, key)
            for (g, w) in zip(s.timesteps, want) { XCTAssertEqual(g, w, accuracy: 1e-3, key) }
        }
    }

    /// alphas_cumprod reproduce torch's float32 values bit for bit (linspace, 1 - betas, cumprod).
    func testAlphasCumprodFloat32Exact() throws {
        let doc = try loadDoc()
        let cases: [(String, BetaSchedule, Bool)] = [("linear", .linear, false), ("scaled_linear", .scaledLinear, false),
                                                    ("squaredcos_cap_v2", .squaredcosCapV2, false),
                                                    ("scaled_linear_zsnr", .scaledLinear, true)]
        for (key, schedule, zsnr) in cases {
            let want = Self.floats(try XCTUnwrap(doc.alphas_cumprod[key]))
            let s = try NoiseSchedule(schedule: schedule, betaStart: 0.00085, betaEnd: 0.012, rescaleZeroTerminalSNR: zsnr)
            let got = s.alphasCumprod.map { Float($0) }
            if zsnr {
                assertClose(got, want, key)
            } else {
                XCTAssertEqual(got, want, key)
            }
        }
    }

    func testFactoryNamesAndErrors() throws {
        let json = #"{"_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000, "set_alpha_to_one": false, "skip_prk_steps": true, "steps_offset": 1, "trained_betas": null, "clip_sample": false}"#
        let cfg = try SchedulerConfig.decode(Data(json.utf8))
        XCTAssertEqual(cfg.betaSchedule, "scaled_linear")
        XCTAssertEqual(cfg.stepsOffset, 1)
        XCTAssertTrue(try SchedulerFactory.make(config: cfg) is PNDMScheduler)
        let expect: [(String, Any.Type)] = [("DPM++ 2M Karras", DPMSolverMultistepScheduler.self), ("euler A", EulerAncestralDiscreteScheduler.self),
                                          ("ddim", DDIMScheduler.self), ("PLMS", PNDMScheduler.self), ("Euler", EulerDiscreteScheduler.self),
                                          ("heun", HeunDiscreteScheduler.self), ("lms", LMSDiscreteScheduler.self),
                                          ("dpm++2m", DPMSolverMultistepScheduler.self), ("DDPM", DDPMScheduler.self)]
        for (name, type) in expect {
            let s = try SchedulerFactory.make(name, config: cfg)
            XCTAssertTrue(Swift.type(of: s) == type, name)
        }
        XCTAssertTrue((try SchedulerFactory.make("dpm++2m-karras", config: cfg) as? SigmaScheduler)?.useKarrasSigmas == true)
        // The pipelines' eta reaches the schedulers whose step takes it when they are built, by name or by class.
        XCTAssertEqual((try SchedulerFactory.make("ddim", config: cfg, eta: 0.5) as? DDIMScheduler)?.eta, 0.5)
        XCTAssertEqual((try SchedulerFactory.make("ddim", config: cfg) as? DDIMScheduler)?.eta, 0)
        var ddimClass = cfg
        ddimClass.className = "DDIMScheduler"
        XCTAssertEqual((try SchedulerFactory.make(config: ddimClass, eta: 0.25) as? DDIMScheduler)?.eta, 0.25)
        XCTAssertEqual((try SchedulerFactory.make("compvis-ddim", config: cfg, eta: 0.5) as? CompVisSampler)?.eta, 0.5)
        XCTAssertEqual((try SchedulerFactory.make("compvis-plms", config: cfg, eta: 0.5) as? CompVisSampler)?.eta, 0) // PLMS takes none
        XCTAssertEqual((try SchedulerFactory.make("tcd", config: cfg) as? TCDScheduler)?.gamma, 0.3)
        XCTAssertEqual((try SchedulerFactory.make("TCD", config: cfg, eta: 0) as? TCDScheduler)?.gamma, 0)
        XCTAssertThrowsError(try LMSDiscreteScheduler(config: cfg, lmsOrder: 5))
        XCTAssertThrowsError(try SchedulerFactory.make("k_dpm_9", config: cfg)) { error in
            let text = "\(error)"
            XCTAssertTrue(text.contains("k_dpm_9") && text.contains("DPM++ 2M Karras") && text.contains("euler-a"), text)
        }
        XCTAssertThrowsError(try SchedulerConfig.decode(Data("{\"num_train_timesteps\": \"x\"}".utf8)))
        var bad = cfg
        bad.betaSchedule = "exotic"
        XCTAssertThrowsError(try SchedulerFactory.make("ddim", config: bad))
        bad = cfg
        bad.timestepSpacing = "sideways"
        XCTAssertThrowsError(try SchedulerFactory.make("euler", config: bad))
        let s = try SchedulerFactory.make("euler-a", config: cfg)
        try s.setTimesteps(10)
        let zero = Self.latents([0])
        XCTAssertThrowsError(try s.step(modelOutput: zero, stepIndex: 0, sample: zero, noise: nil))
        XCTAssertThrowsError(try s.step(modelOutput: Self.latents([0, 1]), stepIndex: 0, sample: zero, noise: TorchGenerator(seed: 0)))
        XCTAssertThrowsError(try s.step(modelOutput: Tensor([0, 1], shape: [2, 1]), stepIndex: 0, sample: Tensor([0, 1], shape: [1, 2]),
                                        noise: TorchGenerator(seed: 0)))  // same count, other shape
        XCTAssertThrowsError(try s.step(modelOutput: zero, stepIndex: 10, sample: zero, noise: TorchGenerator(seed: 0)))
        XCTAssertThrowsError(try s.setTimesteps(0))
        XCTAssertThrowsError(try s.img2imgStartIndex(strength: 1.5))
    }

    func testCompVisTimesteps() {
        XCTAssertEqual(CompVisSampler.makeDDIMTimesteps(.uniform, steps: 10, trainSteps: 1000).last, 901)
        XCTAssertEqual(CompVisSampler.makeDDIMTimesteps(.uniform, steps: 30, trainSteps: 1000).count, 31)
        XCTAssertEqual(CompVisSampler.makeDDIMTimesteps(.quad, steps: 8, trainSteps: 1000).first, 1)
    }
}
