// Converter (the library side of `ldm convert` / `ldm inspect`): CompVis -> diffusers folder ->
// CompVis round trip is exact (names, shapes, bytes), outputs are never overwritten without
// `overwrite`, torch zip -> safetensors keeps names and bytes, bad inputs give clear errors.
import Foundation
import XCTest
@testable import Checkpoints
@testable import CompVis

final class ConverterTests: XCTestCase {
    var tmp: URL!

    override func setUpWithError() throws {
        tmp = FileManager.default.temporaryDirectory.appendingPathComponent("ldm-convert-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: tmp, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: tmp) }

    /// A CompVis-named file with the fixture's names and shapes, deterministic bytes (F32 and some F16),
    /// plus tensors no diffusers component holds.
    func writeCompVis(_ url: URL) throws -> [String: SafeTensorsEntry] {
        var state: UInt64 = 0x9E3779B97F4A7C15
        func bytes(_ n: Int) -> Data {
            var words = [UInt64](repeating: 0, count: (n + 7) / 8)
            for i in words.indices { state = state &* 6364136223846793005 &+ 1442695040888963407; words[i] = state ^ (state >> 29) }
            return words.withUnsafeBytes { Data($0.prefix(n)) }
        }
        var entries: [SafeTensorsEntry] = []
        for (i, p) in try LayoutFixtures.load("sd").pairs.enumerated() {
            let dt: StorageDType = i % 5 == 0 ? .F16 : .F32
            entries.append(SafeTensorsEntry(name: p.compvis, dtype: dt, shape: p.compvisShape,
                                            bytes: bytes(p.compvisShape.reduce(1, *) * dt.byteSize)))
        }
        entries.append(SafeTensorsEntry(name: "betas", dtype: .F32, shape: [10], bytes: bytes(40)))
        entries.append(SafeTensorsEntry(name: "model_ema.num_updates", dtype: .I64, shape: [], bytes: bytes(8)))
        try SafeTensors.write(entries, metadata: ["note": "synthetic"], to: url)
        return Dictionary(entries.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
    }

    /// Same name sets; a failure lists only (a few of) the differences.
    func assertSameNames<A: Sequence, B: Sequence>(_ got: A, _ want: B, line: UInt = #line) where A.Element == String, B.Element == String {
        let g = Set(got), w = Set(want)
        XCTAssertEqual(g.count, w.count, line: line)
        XCTAssertEqual(Array(g.subtracting(w).sorted().prefix(5)), [], "unexpected names", line: line)
        XCTAssertEqual(Array(w.subtracting(g).sorted().prefix(5)), [], "missing names", line: line)
    }

    func testCompVisToDiffusersToCompVisIsExact() throws {
        let src = tmp.appendingPathComponent("model.safetensors")
        let original = try writeCompVis(src)
        let folder = tmp.appendingPathComponent("pipe")
        let lines = try Converter.convert(input: src, output: folder, options: ConvertOptions())
        XCTAssertTrue(lines.joined().contains("not converted"), lines.joined(separator: "\n"))
        XCTAssertTrue(lines.joined().contains("betas"))
        for (c, w) in [("unet", "diffusion_pytorch_model.safetensors"), ("vae", "diffusion_pytorch_model.safetensors"),
                       ("text_encoder", "model.safetensors")] {
            XCTAssertTrue(FileManager.default.fileExists(atPath: folder.appendingPathComponent("\(c)/\(w)").path), c)
            XCTAssertTrue(FileManager.default.fileExists(atPath: folder.appendingPathComponent("\(c)/config.json").path), c)
        }
        let diffusers = try CheckpointFile.open(folder)
        XCTAssertEqual(diffusers.format, .diffusersFolder)
        let pairs = try LayoutFixtures.load("sd").pairs
        assertSameNames(diffusers.tensors.keys, pairs.map(\.diffusers))
        for p in pairs {
            let r = try XCTUnwrap(diffusers.tensors[p.diffusers])
            XCTAssertEqual(r.shape, p.diffusersShape, p.diffusers)
            XCTAssertEqual(try r.rawData(), original[p.compvis]?.bytes, p.diffusers)
        }
        // The derived unet config loads back through DiffusersFolder.
        XCTAssertEqual(diffusers.diffusers?.component("unet")?.config?["layers_per_block"] as? Int, 2)

        let back = tmp.appendingPathComponent("back.safetensors")
        try Converter.convert(input: folder, output: back, options: ConvertOptions())
        let st = try SafeTensors(url: back)
        XCTAssertEqual(st.metadata?["ldm_source_format"], "diffusers folder")
        assertSameNames(st.tensors.keys, pairs.map(\.compvis))
        // Via one file that keeps the diffusers names (unet.*), then --to compvis: the same file.
        let flat = tmp.appendingPathComponent("flat.safetensors"), back2 = tmp.appendingPathComponent("back2.safetensors")
        try Converter.convert(input: folder, output: flat, options: ConvertOptions(target: .safetensors))
        assertSameNames(try SafeTensors(url: flat).tensors.keys, pairs.map(\.diffusers))
        try Converter.convert(input: flat, output: back2, options: ConvertOptions(target: .compvis))
        let st2 = try SafeTensors(url: back2)
        for p in pairs { XCTAssertEqual(try st2[p.compvis]?.rawData(), original[p.compvis]?.bytes, p.compvis) }
        for p in pairs {
            let r = try XCTUnwrap(st[p.compvis])
            let o = try XCTUnwrap(original[p.compvis])
            XCTAssertEqual(r.shape, o.shape, p.compvis)
            XCTAssertEqual(r.dtype, o.dtype, p.compvis)
            XCTAssertEqual(try r.rawData(), o.bytes, p.compvis)
        }
    }

    func testRefusesToOverwriteUnlessAsked() throws {
        let src = tmp.appendingPathComponent("model.safetensors")
        _ = try writeCompVis(src)
        let file = tmp.appendingPathComponent("out.safetensors"), folder = tmp.appendingPathComponent("pipe")
        try Data("keep me".utf8).write(to: file)
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: false)
        try Data("keep".utf8).write(to: folder.appendingPathComponent("marker"))
        for out in [file, folder] {
            XCTAssertThrowsError(try Converter.convert(input: src, output: out, options: ConvertOptions())) { e in
                XCTAssertTrue("\(e)".contains("already exists"), "\(e)")
                XCTAssertTrue("\(e)".contains(out.lastPathComponent), "\(e)")
            }
        }
        XCTAssertEqual(try Data(contentsOf: file), Data("keep me".utf8))
        XCTAssertTrue(FileManager.default.fileExists(atPath: folder.appendingPathComponent("marker").path))

        try Converter.convert(input: src, output: file, options: ConvertOptions(overwrite: true))
        XCTAssertEqual(try SafeTensors(url: file).records.count, 466)
        try Converter.convert(input: src, output: folder, options: ConvertOptions(overwrite: true))
        XCTAssertFalse(FileManager.default.fileExists(atPath: folder.appendingPathComponent("marker").path))
        XCTAssertEqual(try CheckpointFile.open(folder).tensors.count, 464)
        // No temp or moved-aside files are left next to the outputs.
        let left = try FileManager.default.contentsOfDirectory(atPath: tmp.path).sorted()
        XCTAssertEqual(left, ["model.safetensors", "out.safetensors", "pipe"])
    }

    func testTorchZipToSafetensorsKeepsNamesAndBytes() throws {
        let out = tmp.appendingPathComponent("lightning.safetensors")
        let lines = try Converter.convert(input: Fixtures.url("lightning.ckpt"), output: out, options: ConvertOptions())
        XCTAssertTrue(lines[0].contains("safetensors"), lines[0])
        let src = try CheckpointFile.open(Fixtures.url("lightning.ckpt"))
        let st = try SafeTensors(url: out)
        XCTAssertEqual(st.metadata?["ldm_source_format"], "torch zip")
        XCTAssertEqual(Set(st.tensors.keys), Set(src.tensors.keys))
        for (k, r) in src.tensors {
            XCTAssertEqual(try st[k]?.rawData(), try r.rawData(), k)
            XCTAssertEqual(st[k]?.shape, r.shape, k)
        }
    }

    func testDTypeOption() throws {
        let src = tmp.appendingPathComponent("model.safetensors")
        let original = try writeCompVis(src)
        let out = tmp.appendingPathComponent("half.safetensors")
        try Converter.convert(input: src, output: out, options: ConvertOptions(target: .safetensors, dtype: .bf16))
        let st = try SafeTensors(url: out)
        let name = "first_stage_model.encoder.conv_in.bias"
        let r = try XCTUnwrap(st[name])
        XCTAssertEqual(r.dtype, .BF16)
        let o = try XCTUnwrap(original[name])
        let f = try TensorRecord(name: name, dtype: o.dtype, shape: o.shape,
                                 storage: TensorStorage(buffer: ByteBuffer(copying: o.bytes), offset: 0, byteCount: o.bytes.count)).floats()
        XCTAssertEqual(try r.rawData(), Converter.encode(f, as: .BF16))
        XCTAssertEqual(st["model_ema.num_updates"]?.dtype, .I64)   // integers are not cast
    }

    func testEMAOptionUsesLitEmaWeights() throws {
        let src = tmp.appendingPathComponent("model.safetensors")
        var entries = Array(try writeCompVis(src).values)
        let name = "model.diffusion_model.time_embed.0.weight"
        let w = try XCTUnwrap(entries.first { $0.name == name })
        let emaBytes = Data(w.bytes.reversed())
        entries.append(SafeTensorsEntry(name: try XCTUnwrap(EMA.litEmaName(name)), dtype: w.dtype, shape: w.shape, bytes: emaBytes))
        try SafeTensors.write(entries, to: src)
        let folder = tmp.appendingPathComponent("pipe")
        try Converter.convert(input: src, output: folder, options: ConvertOptions(ema: true))
        let t = try XCTUnwrap(try CheckpointFile.open(folder).tensors["unet.time_embedding.linear_1.weight"])
        XCTAssertEqual(try t.rawData(), emaBytes)
        XCTAssertNotEqual(emaBytes, w.bytes)
    }

    func testBadInputsGiveClearErrors() throws {
        let missing = tmp.appendingPathComponent("nope.ckpt")
        XCTAssertThrowsError(try Converter.convert(input: missing, output: tmp.appendingPathComponent("x.safetensors"), options: ConvertOptions())) {
            XCTAssertTrue("\($0)".contains("nope.ckpt") && "\($0)".contains("no such file"), "\($0)")
        }
        let junk = tmp.appendingPathComponent("junk.safetensors")
        try Data([1, 2, 3]).write(to: junk)
        XCTAssertThrowsError(try Converter.convert(input: junk, output: tmp.appendingPathComponent("y.safetensors"), options: ConvertOptions())) {
            XCTAssertTrue("\($0)".contains("junk.safetensors"), "\($0)")
        }
        XCTAssertThrowsError(try Converter.convert(input: junk, output: junk, options: ConvertOptions(overwrite: true))) {
            XCTAssertTrue("\($0)".contains("output is the input"), "\($0)")
        }
        XCTAssertThrowsError(try Converter.convert(input: Fixtures.url("diffusers"), output: tmp.appendingPathComponent("d"),
                                                   options: ConvertOptions(target: .diffusers))) {
            XCTAssertTrue("\($0)".contains("already a diffusers folder"), "\($0)")
        }
        XCTAssertThrowsError(try Converter.convert(input: Fixtures.url("lightning.ckpt"), output: tmp.appendingPathComponent("d"),
                                                   options: ConvertOptions(target: .diffusers))) {
            XCTAssertTrue("\($0)".contains("no CompVis UNet/VAE/CLIP tensors"), "\($0)")
        }
        XCTAssertThrowsError(try Converter.convert(input: Fixtures.url("lightning.ckpt"), output: tmp.appendingPathComponent("nodir/x.safetensors"),
                                                   options: ConvertOptions())) {
            XCTAssertTrue("\($0)".contains("output folder does not exist"), "\($0)")
        }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: tmp.path), ["junk.safetensors"])
    }

    func testInspectionReport() throws {
        let text = try Inspection.report(path: Fixtures.url("lightning.ckpt").path, maxTensors: 1)
        XCTAssertTrue(text.contains("format: torch zip"), text)
        XCTAssertTrue(text.contains("more"), text)
        XCTAssertThrowsError(try Inspection.report(path: tmp.appendingPathComponent("missing.ckpt").path)) {
            XCTAssertTrue("\($0)".contains("missing.ckpt: no such file"), "\($0)")
        }
        let src = tmp.appendingPathComponent("model.safetensors")
        _ = try writeCompVis(src)
        XCTAssertTrue(try Inspection.report(path: src.path).contains("first_stage_model"))
        XCTAssertThrowsError(try Inspection.report(path: src.path, ema: true)) {
            XCTAssertTrue("\($0)".contains("no EMA weights"), "\($0)")
        }
    }
}
