// PNG/JPEG decoding against Pillow (Image.open + exif_transpose + convert("RGB")), text chunks,
// PNG writing, atomic writes and every invalid-input fixture.
import Foundation
import XCTest
@testable import Imaging

final class CodecTests: XCTestCase {
    func testDecodeMatchesPillow() throws {
        let cases = try Fixtures.list("decode")
        XCTAssertGreaterThanOrEqual(cases.count, 14)
        for c in cases {
            let file = try XCTUnwrap(c["file"] as? String)
            let loaded = try ImageIO.load(path: Fixtures.path(file))
            XCTAssertEqual(loaded.image.width, int(c["width"]), file)
            XCTAssertEqual(loaded.image.height, int(c["height"]), file)
            XCTAssertEqual(loaded.format, file.hasSuffix(".png") ? .png : .jpeg, file)
            let expected = try Fixtures.u8(try XCTUnwrap(c["rgb"] as? String))
            XCTAssertEqual(loaded.image.pixels.count, expected.count, file)
            let (maxDiff, _) = compareBytes(loaded.image.pixels, expected)
            XCTAssertLessThanOrEqual(maxDiff, int(c["tolerance"]) ?? 0, "\(file): max difference to Pillow")
            if let alphaFile = c["alpha"] as? String {
                let a = try XCTUnwrap(loaded.alpha, "\(file) should report its alpha channel")
                XCTAssertLessThanOrEqual(compareBytes(a, try Fixtures.u8(alphaFile)).maxDiff, int(c["tolerance"]) ?? 0, file)
            } else {
                XCTAssertNil(loaded.alpha, file)
            }
            let text = try XCTUnwrap(c["text"] as? [String: String])
            for (k, v) in text { XCTAssertEqual(loaded.text(k), v, "\(file) text chunk \(k)") }
            XCTAssertEqual(loaded.textChunks.count, text.count, file)
        }
    }

    func testGrayscaleSourcesAreFlagged() throws {
        XCTAssertTrue(try ImageIO.load(path: Fixtures.path("gray8.png")).isGrayscale)
        XCTAssertTrue(try ImageIO.load(path: Fixtures.path("gray.jpg")).isGrayscale)
        XCTAssertFalse(try ImageIO.load(path: Fixtures.path("rgb8.png")).isGrayscale)
    }

    func testAlphaCompositeOverWhite() throws {
        let dropped = try ImageIO.load(path: Fixtures.path("rgba8.png"))
        let white = try ImageIO.load(path: Fixtures.path("rgba8.png"), alpha: .compositeOverWhite)
        let a = try XCTUnwrap(dropped.alpha)
        for i in 0..<a.count {
            for c in 0..<3 {
                let v = Int(dropped.image.pixels[3 * i + c]), al = Int(a[i])
                XCTAssertEqual(Int(white.image.pixels[3 * i + c]), (v * al + 255 * (255 - al) + 127) / 255)
            }
        }
        XCTAssertNotEqual(dropped.image, white.image)
    }

    func testInvalidFilesThrowClearErrors() throws {
        let cases = try Fixtures.list("invalid")
        XCTAssertGreaterThanOrEqual(cases.count, 12)
        for c in cases {
            let file = try XCTUnwrap(c["file"] as? String), expect = try XCTUnwrap(c["expect"] as? String)
            XCTAssertThrowsError(try ImageIO.load(path: Fixtures.path(file)), file) { error in
                guard let e = error as? ImageError else { return XCTFail("\(file): \(error)") }
                let kind: String
                switch e {
                case .emptyFile: kind = "emptyFile"
                case .notAnImage: kind = "notAnImage"
                case .unsupportedFormat: kind = "unsupportedFormat"
                case .decodeFailed: kind = "decodeFailed"
                case .invalidDimensions: kind = "invalidDimensions"
                default: kind = "\(e)"
                }
                XCTAssertEqual(kind, expect, "\(file): \(e)")
                XCTAssertTrue(e.description.contains(file), "message names the file: \(e)")
            }
        }
        XCTAssertThrowsError(try ImageIO.load(path: Fixtures.path("does-not-exist.png"))) { e in
            XCTAssertEqual(e as? ImageError, .fileNotFound(Fixtures.path("does-not-exist.png")))
        }
        XCTAssertThrowsError(try ImageIO.load(path: Fixtures.dir.path))
    }

    func testEveryTruncationOfAPNGAndJPEGThrows() throws {
        for file in ["palette_trns.png", "photo.jpg"] {
            let data = try Fixtures.u8(file)
            var cut = 0
            while cut < data.count - 2 {  // the last 2 bytes of a JPEG are EOI, which libjpeg tolerates missing
                XCTAssertThrowsError(try ImageIO.decode(Array(data[0..<cut]), name: file), "\(file) cut at \(cut)")
                cut += max(1, data.count / 97)
            }
        }
    }

    func testSniffingIgnoresExtension() throws {
        let jpegBytes = try Fixtures.u8("photo.jpg")
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("imaging-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let misnamed = dir.appendingPathComponent("really-a-jpeg.png").path
        try Data(jpegBytes).write(to: URL(fileURLWithPath: misnamed))
        let loaded = try ImageIO.load(path: misnamed)
        XCTAssertEqual(loaded.format, .jpeg)
        XCTAssertEqual(loaded.image, try ImageIO.load(path: Fixtures.path("photo.jpg")).image)
    }

    func testPNGWriteRoundTripWithParameters() throws {
        let src = try ImageIO.loadRGB(path: Fixtures.path("rgb8.png"))
        var params = GenerationParameters(prompt: "a cat, oil painting", negativePrompt: "blurry", steps: 20,
                                          sampler: "Euler a", cfgScale: 7, seed: 42, width: 512, height: 512,
                                          model: "v1-5")
        params.extra = [.init("Denoising strength", "0.75")]
        let extraText = PNGTextChunk(keyword: "Comment", text: "snow \u{2603}")
        let bytes = try PNGCodec.encode(src, text: [params.pngTextChunk, extraText])
        let back = try ImageIO.decode(bytes)
        XCTAssertEqual(back.image, src)
        XCTAssertEqual(back.text("parameters"), params.text)
        XCTAssertEqual(back.text("Comment"), "snow \u{2603}")
        XCTAssertEqual(back.generationParameters, params)
        XCTAssertEqual(Array(bytes[37..<41]), Array("tEXt".utf8), "tEXt spliced right after IHDR")

        let gray = src.grayscale()
        XCTAssertEqual(try ImageIO.decode(try PNGCodec.encode(gray)).image, gray.rgb())
        XCTAssertThrowsError(try PNGCodec.encode(src, text: [PNGTextChunk(keyword: "", text: "x")]))
    }

    func testAtomicWriteRefusesToOverwrite() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("imaging-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("out.png").path
        let a = try RGBImage(width: 4, height: 3, fill: (10, 20, 30))
        let b = try RGBImage(width: 4, height: 3, fill: (200, 100, 0))
        try a.writePNG(to: path)
        XCTAssertThrowsError(try b.writePNG(to: path)) { e in
            XCTAssertEqual(e as? ImageError, .fileExists(path))
            XCTAssertTrue("\(e)".contains(path))
        }
        XCTAssertEqual(try ImageIO.loadRGB(path: path), a)
        try b.writePNG(to: path, overwrite: true)
        XCTAssertEqual(try ImageIO.loadRGB(path: path), b)
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: dir.path)
        XCTAssertEqual(leftovers, ["out.png"], "no temporary files left behind")
        XCTAssertThrowsError(try a.writePNG(to: dir.appendingPathComponent("missing/out.png").path))
    }

    func testImageInitValidation() {
        XCTAssertThrowsError(try RGBImage(width: 0, height: 3, pixels: []))
        XCTAssertThrowsError(try RGBImage(width: 20000, height: 1, fill: (0, 0, 0)))
        XCTAssertThrowsError(try RGBImage(width: 2, height: 2, pixels: [1, 2, 3]))
        XCTAssertThrowsError(try GrayImage(width: 2, height: 2, pixels: [1, 2, 3]))
    }
}
