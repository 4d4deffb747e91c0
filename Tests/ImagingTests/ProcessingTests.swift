// Resampling, grayscale, VaeImageProcessor conversions and grids against Pillow / diffusers fixtures.
import Foundation
import XCTest
@testable import Imaging

final class ProcessingTests: XCTestCase {
    func testGrayscaleMatchesPillowConvertL() throws {
        let g = try Fixtures.dict("grayscale")
        let src = try RGBImage(width: 32, height: 32, pixels: try Fixtures.u8(try XCTUnwrap(g["src"] as? String)))
        XCTAssertEqual(src.grayscale().pixels, try Fixtures.u8(try XCTUnwrap(g["expected"] as? String)))
    }

    func testResizeMatchesPillow() throws {
        let s = try Fixtures.dict("resize_src")
        let w = try XCTUnwrap(int(s["width"])), h = try XCTUnwrap(int(s["height"]))
        let rgb = try RGBImage(width: w, height: h, pixels: try Fixtures.u8(try XCTUnwrap(s["rgb"] as? String)))
        let gray = try GrayImage(width: w, height: h, pixels: try Fixtures.u8(try XCTUnwrap(s["gray"] as? String)))
        let cases = try Fixtures.list("resize")
        XCTAssertGreaterThanOrEqual(cases.count, 15)
        for c in cases {
            let filter = try XCTUnwrap(ResampleFilter(rawValue: try XCTUnwrap(c["filter"] as? String)))
            let ow = try XCTUnwrap(int(c["width"])), oh = try XCTUnwrap(int(c["height"]))
            let expected = try Fixtures.u8(try XCTUnwrap(c["expected"] as? String))
            let got = (c["kind"] as? String) == "gray"
                ? try gray.resized(width: ow, height: oh, filter: filter).pixels
                : try rgb.resized(width: ow, height: oh, filter: filter).pixels
            XCTAssertEqual(got.count, expected.count)
            // Same integer arithmetic as Resample.c: exact agreement is expected (the brief allows 1 level).
            let (maxDiff, differing) = compareBytes(got, expected)
            XCTAssertEqual(maxDiff, 0, "\(c["expected"] ?? ""): \(differing) values differ, max \(maxDiff)")
        }
        XCTAssertEqual(try rgb.resized(width: w, height: h), rgb)
        XCTAssertThrowsError(try rgb.resized(width: 0, height: 5))
    }

    private func assertClose(_ a: [Float], _ b: [Float], _ tol: Float, _ what: String) {
        XCTAssertEqual(a.count, b.count, what)
        var m: Float = 0
        for (x, y) in zip(a, b) { m = max(m, abs(x - y)) }
        XCTAssertLessThanOrEqual(m, tol, what)
    }

    func testVaeImageProcessorMatchesDiffusers() throws {
        let s = try Fixtures.dict("resize_src")
        let src = try RGBImage(width: 37, height: 29, pixels: try Fixtures.u8(try XCTUnwrap(s["rgb"] as? String)))
        let vae = try Fixtures.dict("vae")
        let proc = VaeImageProcessor()
        for c in try XCTUnwrap(vae["preprocess"] as? [[String: Any]]) {
            let shape = try XCTUnwrap(c["shape"] as? [Int])
            let mode = ResizeMode(rawValue: try XCTUnwrap(c["mode"] as? String)) ?? .default
            let (t, h, w) = try proc.preprocess(src, height: int(c["height"]), width: int(c["width"]), resizeMode: mode)
            XCTAssertEqual([3, h, w], shape)
            assertClose(t, try Fixtures.f32(try XCTUnwrap(c["expected"] as? String)), 0, "preprocess \(shape) \(mode)")
        }
        for c in try XCTUnwrap(vae["mask"] as? [[String: Any]]) {
            let shape = try XCTUnwrap(c["shape"] as? [Int])
            let (t, h, w) = try proc.preprocessMask(src, height: int(c["height"]), width: int(c["width"]),
                                                    binarize: (c["binarize"] as? Bool) ?? true)
            XCTAssertEqual([1, h, w], shape)
            assertClose(t, try Fixtures.f32(try XCTUnwrap(c["expected"] as? String)), 0, "mask \(c)")
        }
        let post = try XCTUnwrap(vae["postprocess"] as? [String: Any])
        let input = try Fixtures.f32(try XCTUnwrap(post["input"] as? String))
        let img = try VaeImageProcessor.toImage(input, height: 16, width: 24)
        XCTAssertEqual(img.pixels, try Fixtures.u8(try XCTUnwrap(post["expected"] as? String)))
        XCTAssertThrowsError(try VaeImageProcessor.toImage(input, height: 16, width: 25))
        XCTAssertThrowsError(try proc.preprocess(src, height: 4, width: 4))
    }

    func testTensorRoundTrip() throws {
        let src = try ImageIO.loadRGB(path: Fixtures.path("rgb8.png"))
        let t = VaeImageProcessor.toTensor(src)
        XCTAssertEqual(try VaeImageProcessor.toImage(t, height: src.height, width: src.width), src)
        XCTAssertEqual(VaeImageProcessor.denormalizeToByte(.nan), 0)
        XCTAssertEqual(VaeImageProcessor.denormalizeToByte(5), 255)
    }

    func testGridMatchesMakeImageGrid() throws {
        let g = try Fixtures.dict("grid")
        let tiles = try (g["tiles"] as? [String] ?? []).map { try RGBImage(width: 5, height: 4, pixels: try Fixtures.u8($0)) }
        XCTAssertEqual(tiles.count, 3)
        let grid = try imageGrid(tiles, rows: 2)
        XCTAssertEqual(grid.width, int(g["width"])); XCTAssertEqual(grid.height, int(g["height"]))
        XCTAssertEqual(grid.pixels, try Fixtures.u8(try XCTUnwrap(g["expected"] as? String)))
        let padded = try imageGrid(tiles, rows: 1, padding: 2, padValue: 255)
        XCTAssertEqual(padded.width, 3 * 7 + 2); XCTAssertEqual(padded.height, 4 + 4)
        XCTAssertEqual(padded[0, 0].0, 255)
        XCTAssertEqual(padded[2, 2].0, tiles[0][0, 0].0)
        XCTAssertThrowsError(try imageGrid([], rows: 1))
        XCTAssertThrowsError(try imageGrid(tiles + [try RGBImage(width: 3, height: 3, fill: (0, 0, 0))], rows: 2))
    }

    func testCrops() throws {
        let src = try ImageIO.loadRGB(path: Fixtures.path("rgb8.png"))  // 13x9
        let c = try centerCrop(src, width: 5, height: 4)
        XCTAssertEqual(c[0, 0].0, src[4, 2].0)  // left = round(4) = 4, top = round(2.5) = 2 (half to even)
        XCTAssertThrowsError(try centerCrop(src, width: 14, height: 4))
        XCTAssertThrowsError(try src.cropped(left: 10, top: 0, width: 5, height: 1))
    }
}
