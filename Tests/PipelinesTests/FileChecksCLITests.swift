// The command line's file checks (ldm FileChecks.swift), through the `ldm` executable: missing or unusable inputs,
// model paths and outputs are refused before any model is loaded, and nothing is written; a batch is written as
// FILE-1.png ... FILE-n.png.
import Foundation
import XCTest

final class FileChecksCLITests: LDMCommandTestCase {
    var tinyLDM: String { fixtures.appendingPathComponent("tiny-ldm").path }
    var tinySD: String { fixtures.appendingPathComponent("tiny-sd").path }

    func expectFailure(_ args: [String], _ message: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let (status, err) = try run(args)
        XCTAssertNotEqual(status, 0, "\(args)", file: file, line: line)
        XCTAssertTrue(err.contains(message), "\(args): \(err)", file: file, line: line)
    }

    func testInputsAndModelPaths() throws {
        let dir = try tempDir()
        let out = dir.appendingPathComponent("out.png").path
        let img2img = ["img2img", "--model", tinySD, "--prompt", "a", "--steps", "2", "--output", out]
        try expectFailure(img2img + ["--init-image", dir.appendingPathComponent("no.png").path], "init image \(dir.path)/no.png does not exist")
        try expectFailure(["inpaint", "--model", tinySD, "--prompt", "a", "--output", out,
                           "--init-image", fixtures.appendingPathComponent("init.png").path, "--mask", dir.path], "is a directory")
        try expectFailure(["sample", "--model", dir.path, "--output", out], "no model_index.json")
        try expectFailure(["sample", "--model", dir.appendingPathComponent("x.ckpt").path, "--output", out], "does not exist")
        XCTAssertFalse(FileManager.default.fileExists(atPath: out))
    }

    func testOutputs() throws {
        let dir = try tempDir()
        let sample = ["sample", "--model", tinyLDM, "--steps", "1", "--seed", "0", "--quiet"]
        let out = dir.appendingPathComponent("out.png")
        try Data([1]).write(to: out)
        try expectFailure(sample + ["--output", out.path], "already exists")
        XCTAssertEqual(try Data(contentsOf: out), Data([1]))
        try expectFailure(sample + ["--output", dir.path + "/missing/o.png"], "does not exist")
        try expectFailure(sample + ["--output", dir.path + "/o.jpg"], "must end in .png")
        XCTAssertEqual(try run(sample + ["--output", out.path, "--overwrite"]).0, 0)
        XCTAssertNotEqual(try Data(contentsOf: out), Data([1]))
        // A batch: FILE-1.png, FILE-2.png; one image: FILE itself.
        let batch = dir.appendingPathComponent("b.png")
        XCTAssertEqual(try run(sample + ["--output", batch.path, "--batch-size", "2"]).0, 0)
        let names = try FileManager.default.contentsOfDirectory(atPath: dir.path).sorted()
        XCTAssertEqual(names, ["b-1.png", "b-2.png", "out.png"])
    }
}
