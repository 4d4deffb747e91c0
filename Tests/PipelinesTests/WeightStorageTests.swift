// Inference weight storage (NeuralNetwork's WeightStorage): parameters that keep a mapped file's bytes, 16-bit
// Linear/Conv2d weights kept as stored or held in bf16, converted weights' file pages dropped. The definition these
// tests hold it to: the same numbers as the float32 copies of the default load (16-bit values widen exactly; bf16
// compute rounds every Linear/Conv2d weight to bf16 anyway), so images are bit for bit those of a float32 load.
import Checkpoints
import Foundation
import NeuralNetwork
import Pipelines
import TensorCore
import XCTest

final class WeightStorageTests: XCTestCase {
    final class Small: Module {
        let lin = Linear(6, 5), conv = Conv2d(3, 4, kernel: 3, padding: 1), norm = LayerNorm(5)
        var namedParameters: [(String, Tensor)] { scoped("lin", lin) + scoped("conv", conv) + scoped("norm", norm) }
    }

    func tempDir() throws -> URL {
        let d = FileManager.default.temporaryDirectory.appendingPathComponent("ldm-weights-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: d, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: d) }
        return d
    }

    func values(_ m: Module) -> [String: [Float]] { Dictionary(uniqueKeysWithValues: m.namedParameters.map { ($0.0, $0.1.toArray()) }) }

    func testParametersKeepTheFileTypeAndTheFloat32Values() throws {
        let dir = try tempDir()
        let src = Small()
        let g = TorchGenerator(seed: 3)
        for (_, p) in src.namedParameters { p.assign(Tensor.randn(p.shape, generator: g)) }
        let x = Tensor.randn([2, 6], generator: g), image = Tensor.randn([1, 3, 5, 5], generator: g)
        for fileType in [DType.float32, .float16, .bfloat16] {
            let url = dir.appendingPathComponent("\(fileType).safetensors")
            try src.save(to: url, dtype: fileType)
            let records = try SafeTensors(url: url).tensors
            let reference = Small()
            try reference.load(records)
            let want = values(reference)
            XCTAssertTrue(reference.namedParameters.allSatisfy { $0.1.dtype == .float32 && !$0.1.storage.isFileMapping })
            for storage in [WeightStorage.mapped, .asStored, .bfloat16] {
                let m = Small()
                try WeightStorage.with(storage) { try m.load(records) }
                let what = "\(fileType) file, \(storage)"
                let lowerType: DType = storage == .bfloat16 ? .bfloat16 : storage == .mapped ? .float32 : fileType
                XCTAssertEqual(m.lin.weight.dtype, lowerType, what)
                XCTAssertEqual(m.conv.weight.dtype, lowerType, what)
                for t in [m.lin.bias!, m.conv.bias!, m.norm.weight, m.norm.bias] { XCTAssertEqual(t.dtype, .float32, what) }
                // Kept in place in the mapped file when nothing is converted.
                XCTAssertEqual(m.lin.weight.storage.isFileMapping, lowerType == fileType, what)
                XCTAssertEqual(m.norm.weight.storage.isFileMapping, fileType == .float32, what)
                let got = values(m)
                for (name, w) in want {
                    let isWeight = name == "lin.weight" || name == "conv.weight"
                    let expected = isWeight && lowerType == .bfloat16 && fileType != .bfloat16 ? Tensor(w, shape: [w.count]).to(.bfloat16).toArray() : w
                    XCTAssertEqual(got[name], expected, "\(what): \(name)")
                }
                if storage != .bfloat16 {
                    // float32 compute on the kept weights: exactly the float32 copies' results.
                    XCTAssertEqual(m.lin(x).toArray(), reference.lin(x).toArray(), what)
                    XCTAssertEqual(m.conv(image).toArray(), reference.conv(image).toArray(), what)
                }
                // Dropping the mapped pages changes no value.
                m.evictMappedWeights()
                XCTAssertEqual(values(m), got, what)
            }
        }
    }

    /// `releaseConvertedWeights` frees exactly the copies a load converted from the mapped file (the parameter then
    /// reads the file's bytes, its values as stored) and `restoreConvertedWeights` makes them again bit for bit;
    /// weights rebound (a merged LoRA) or updated in place since the load are neither released nor restored.
    func testConvertedWeightsAreReleasedAndMadeAgainBitForBit() throws {
        let dir = try tempDir()
        let src = Small()
        let g = TorchGenerator(seed: 5)
        for (_, p) in src.namedParameters { p.assign(Tensor.randn(p.shape, generator: g)) }
        for fileType in [DType.float32, .float16, .bfloat16] {
            let url = dir.appendingPathComponent("\(fileType).safetensors")
            try src.save(to: url, dtype: fileType)
            let records = try SafeTensors(url: url).tensors
            for storage in [WeightStorage.mapped, .asStored, .bfloat16, .float32] {
                let what = "\(fileType) file, \(storage)"
                let m = Small()
                try WeightStorage.with(storage) { try m.load(records) }
                let loaded = m.namedParameters.map { ($0.0, $0.1.dtype, $0.1.toArray()) }
                let weights = [m.lin.weight, m.conv.weight]
                let lowerType = weights[0].dtype
                // Converted: a Linear/Conv2d weight whose held type is not the file's (never under float32 copies).
                let converted = storage != .float32 && lowerType != fileType
                let freed = m.releaseConvertedWeights()
                XCTAssertEqual(freed, converted ? weights.reduce(0) { $0 + $1.count * lowerType.byteSize } : 0, what)
                for w in weights {
                    XCTAssertEqual(w.dtype, converted ? fileType : lowerType, what)
                    if converted { XCTAssertTrue(w.storage.isFileMapping, what) }
                }
                // Released weights read the file's values as stored.
                let fileValues = try records["lin.weight"]!.tensor().float32().toArray()
                if converted { XCTAssertEqual(m.lin.weight.toArray(), fileValues, what) }
                XCTAssertEqual(m.restoreConvertedWeights(), freed, what)
                for ((name, dtype, values), (_, t)) in zip(loaded, m.namedParameters) {
                    XCTAssertEqual(t.dtype, dtype, "\(what): \(name)")
                    XCTAssertEqual(t.toArray(), values, "\(what): \(name)")
                    if converted && (name == "lin.weight" || name == "conv.weight") { XCTAssertFalse(t.storage.isFileMapping, what) }
                }
                XCTAssertEqual(m.restoreConvertedWeights(), 0, "\(what): nothing left to restore")
                guard converted else { continue }
                // Released and restored again: the same copies once more.
                XCTAssertEqual(m.releaseConvertedWeights(), freed, what)
                XCTAssertEqual(m.restoreConvertedWeights(), freed, what)
                XCTAssertEqual(m.lin.weight.toArray(), loaded[0].2, what)
                // A weight rebound since the load (a merged LoRA) stays as it is.
                let merged = Tensor.randn(m.lin.weight.shape, generator: g)
                m.lin.weight.rebind(to: merged)
                XCTAssertEqual(m.releaseConvertedWeights(), m.conv.weight.count * lowerType.byteSize, what)
                XCTAssertTrue(m.lin.weight.storage === merged.storage, what)
                XCTAssertEqual(m.restoreConvertedWeights(), m.conv.weight.count * lowerType.byteSize, what)
                XCTAssertTrue(m.lin.weight.storage === merged.storage, what)
                // A weight updated in place since (a float32 copy of a 16-bit file) is not released either.
                if lowerType == .float32 {
                    m.conv.weight.assign(Tensor.randn(m.conv.weight.shape, generator: g))
                    let updated = m.conv.weight.toArray()
                    XCTAssertEqual(m.releaseConvertedWeights(), 0, what)
                    XCTAssertEqual(m.conv.weight.toArray(), updated, what)
                }
            }
        }
    }

    /// A copy of the tiny SD folder with every safetensors tensor stored as float16.
    func float16Folder() throws -> URL {
        let out = try tempDir().appendingPathComponent("tiny-sd-f16")
        try FileManager.default.copyItem(at: fixtures.appendingPathComponent("tiny-sd"), to: out)
        for component in ["unet", "vae", "text_encoder"] {
            let folder = out.appendingPathComponent(component)
            for name in try FileManager.default.contentsOfDirectory(atPath: folder.path) where name.hasSuffix(".safetensors") {
                let url = folder.appendingPathComponent(name)
                let file = try SafeTensors(data: Data(contentsOf: url))
                let entries = try file.records.map { r -> SafeTensorsEntry in
                    guard r.dtype == .F32 else { return SafeTensorsEntry(name: r.name, dtype: r.dtype, shape: r.shape, bytes: try r.rawData()) }
                    let h = Tensor(try r.floats(), shape: [r.elementCount]).to(.float16)
                    return SafeTensorsEntry(name: r.name, dtype: .F16, shape: r.shape, bytes: Data(bytes: h.storage.base, count: r.elementCount * 2))
                }
                try FileManager.default.removeItem(at: url)
                try SafeTensors.write(entries, metadata: [:], to: url)
            }
        }
        return out
    }

    func image(_ bundle: ModelBundle, _ precision: ComputePrecision = .f32) throws -> [UInt8] {
        try precision.run {
            try StableDiffusionPipeline(bundle: bundle).textToImage(
                PromptOptions(prompt: "a red circle", guidanceScale: 7.5, width: 16, height: 16),
                SamplingOptions(sampler: "ddim", steps: 3), generator: TorchGenerator(seed: 11)).images[0].pixels
        }
    }

    func testImagesEqualThoseOfFloat32Copies() throws {
        for folder in [fixtures.appendingPathComponent("tiny-sd"), try float16Folder()] {
            let reference = try ModelBundle.load(folder)
            let want = try image(reference)
            let mapped = try ModelBundle.load(folder, forInferenceIn: .float32)
            mapped.evictsWeightsAfterUse = true
            XCTAssertEqual(try image(mapped), want, folder.lastPathComponent)
            XCTAssertEqual(try image(mapped), want, "\(folder.lastPathComponent): a second run after the pages were dropped")
            let asStored = try WeightStorage.with(.asStored) { try ModelBundle.load(folder) }
            XCTAssertEqual(try image(asStored), want, "\(folder.lastPathComponent) with 16-bit weights kept")
            // bf16 compute: bf16-held weights give the image of float32-held ones.
            let wantBF16 = try image(reference, .bf16)
            let bf16 = try ComputePrecision.bf16.run { try ModelBundle.load(folder, forInferenceIn: .bfloat16) }
            XCTAssertTrue(bf16.unet.namedParameters.contains { $0.1.dtype == .bfloat16 })
            XCTAssertEqual(try image(bf16, .bf16), wantBF16, folder.lastPathComponent)
            // Not evicting (the server's cached models): the converted weights stay after a generation.
            XCTAssertTrue(bf16.unet.namedParameters.contains { $0.1.dtype == .bfloat16 })
            // Evicting (the command line): the UNet's bf16 copies are released once the loop is over (the decode runs
            // without them) and made again, bit for bit, for the next generation.
            bf16.evictsWeightsAfterUse = true
            let bf16Weights = bf16.unet.namedParameters.filter { $0.1.dtype == .bfloat16 }.map { ($0.0, $0.1.toArray()) }
            for run in 1...2 {
                XCTAssertEqual(try image(bf16, .bf16), wantBF16, "\(folder.lastPathComponent): run \(run) releasing the UNet's copies")
                XCTAssertFalse(bf16.unet.namedParameters.contains { $0.1.dtype == .bfloat16 }, "released after run \(run)")
            }
            let restored = Dictionary(uniqueKeysWithValues: bf16.unet.namedParameters.map { ($0.0, $0.1) })
            bf16.unet.restoreConvertedWeights()
            for (name, values) in bf16Weights {
                XCTAssertEqual(restored[name]?.dtype, .bfloat16, name)
                XCTAssertEqual(restored[name]?.toArray(), values, name)
            }
        }
    }

    /// SDXL's loop releases the UNet's converted weights as SD's does (the command line), and the next generation
    /// makes them again bit for bit.
    func testSDXLReleasesConvertedUNetWeightsAfterTheLoop() throws {
        let folder = SDXLFixtures.dir.appendingPathComponent("tiny-sdxl")
        let bf16 = try ComputePrecision.bf16.run { try ModelBundle.load(folder, forInferenceIn: .bfloat16) }
        XCTAssertTrue(bf16.isSDXL)
        let want = try image(bf16, .bf16)
        XCTAssertTrue(bf16.unet.namedParameters.contains { $0.1.dtype == .bfloat16 }, "kept without eviction")
        bf16.evictsWeightsAfterUse = true
        for run in 1...2 {
            XCTAssertEqual(try image(bf16, .bf16), want, "run \(run) releasing the UNet's copies")
            XCTAssertFalse(bf16.unet.namedParameters.contains { $0.1.dtype == .bfloat16 }, "released after run \(run)")
        }
    }

    func testLoRAMergeOnMappedWeightsAndExactUnmerge() throws {
        let dir = fixtures.appendingPathComponent("lora")
        let lora = try LoRAFile(url: dir.appendingPathComponent("peft.safetensors"))
        for folder in [fixtures.appendingPathComponent("tiny-sd"), try float16Folder()] {
            let reference = try ModelBundle.load(folder)
            try reference.mergeLoRAs([(lora, 0.8)])
            let want = try image(reference)
            let mapped = try ModelBundle.load(folder, forInferenceIn: .float32)
            let before = mapped.loraTargets.mapValues { ($0.storage, $0.dtype, $0.toArray()) }
            let applied = try mapped.mergeLoRAs([(lora, 0.8)])
            XCTAssertFalse(applied.changedParameters.isEmpty)
            XCTAssertEqual(try image(mapped), want, folder.lastPathComponent)
            mapped.unmergeLoRAs()
            for (name, t) in mapped.loraTargets {
                let b = try XCTUnwrap(before[name])
                XCTAssertTrue(t.storage === b.0 && t.dtype == b.1, name)
                XCTAssertEqual(t.toArray(), b.2, name)
            }
        }
    }

    /// bf16 compute with bf16-held weights (what `--precision auto` runs on a CPU with native bf16) against diffusers'
    /// float32 image of the same request: no further from it than diffusers' own bf16 pipeline
    /// (tools/fixtures/pipeline_bf16.py), in mean absolute error on [0, 1] values (ours quantised to 8 bits: + 0.5/255).
    func testBF16ImageWithinTorchBF16ErrorOfFloat32() throws {
        let refs = try CheckpointFile.open(fixtures.appendingPathComponent("pipeline_bf16.safetensors")).tensors
        let f32 = try XCTUnwrap(refs["f32"]).floats(), torchBF16 = try XCTUnwrap(refs["bf16"]).floats()
        let folder = fixtures.appendingPathComponent("tiny-sd")
        let meanError = { (a: [Float]) in zip(a, f32).reduce(0) { $0 + abs($1.0 - $1.1) } / Float(f32.count) }
        let ourF32 = try image(try ModelBundle.load(folder, forInferenceIn: .float32)).map { Float($0) / 255 }
        XCTAssertLessThanOrEqual(meanError(ourF32), 0.5 / 255 + 1e-4, "float32 should be diffusers' image")
        let bundle = try ComputePrecision.bf16.run { try ModelBundle.load(folder, forInferenceIn: .bfloat16) }
        let ours = try image(bundle, .bf16).map { Float($0) / 255 }
        let (ourError, torchError) = (meanError(ours), meanError(torchBF16))
        print("tiny SD image, mean |x - float32|: ours bf16 \(ourError) (native: \(NativeBF16.available)), torch bf16 \(torchError)")
        XCTAssertGreaterThan(ourError, meanError(ourF32), "bf16 compute should change the image")
        XCTAssertLessThanOrEqual(ourError, torchError + 0.5 / 255)
    }
}
