// ObjectsBoundingBoxConditionalBuilder against taming-transformers' own (tools/fixtures/compvis_layout.py,
// Fixtures/objects_bbox/cases.json): the token ids must be identical for every case (Open Images settings, flags,
// half-to-even rounding, truncation to no_max_objects, boxes outside the crop dropped or clamped, crops, flips, no crop
// encoding, other grids). taming shuffles the kept objects; each case records the order its shuffle produced, which
// the test applies through `order`.
import Foundation
import Tokenizers
import XCTest

final class ObjectsBoundingBoxBuilderTests: XCTestCase {
    struct Settings: Decodable {
        let no_object_classes, no_max_objects, no_tokens: Int
        let encode_crop, use_group_parameter, use_additional_parameters: Bool
    }
    struct Object: Decodable {
        let `class`: Int
        let box: [Double]
        let group_of, occluded, depiction, inside: Bool?
    }
    struct Case: Decodable {
        let name: String
        let settings: Settings
        let objects: [Object]
        let crop: [Double]?
        let flip: Bool
        let order: [Int]
        let tokens: [Int]
    }

    func testTokensMatchTaming() throws {
        let cases = try JSONDecoder().decode([Case].self, from: Data(contentsOf: Fixtures.url("objects_bbox/cases.json")))
        XCTAssertEqual(cases.count, 17)
        for c in cases {
            let s = c.settings
            let b = try ObjectsBoundingBoxConditionalBuilder(
                noObjectClasses: s.no_object_classes, noMaxObjects: s.no_max_objects, noTokens: s.no_tokens,
                encodeCrop: s.encode_crop, useGroupParameter: s.use_group_parameter, useAdditionalParameters: s.use_additional_parameters)
            let anns = c.objects.map { o in
                ObjectsBoundingBoxConditionalBuilder.Annotation(
                    categoryNo: o.class, bbox: .init(corners: o.box[0], o.box[1], o.box[2], o.box[3]), isGroupOf: o.group_of ?? false,
                    isOccluded: o.occluded ?? false, isDepiction: o.depiction ?? false, isInside: o.inside ?? false)
            }
            let crop = c.crop.map { ObjectsBoundingBoxConditionalBuilder.BoundingBox(x0: $0[0], y0: $0[1], width: $0[2], height: $0[3]) }
            let tokens = try b.build(anns, crop: crop, horizontalFlip: c.flip) { kept in
                XCTAssertEqual(kept.count, c.order.count, c.name)
                let before = kept
                kept = c.order.map { before[$0] }
            }
            XCTAssertEqual(tokens, c.tokens, c.name)
            XCTAssertEqual(tokens.count, b.embeddingDim, c.name)
        }
    }

    func testOpenImagesDefaultsAndRounding() throws {
        let b = try ObjectsBoundingBoxConditionalBuilder()
        XCTAssertEqual(b.noSections, 90); XCTAssertEqual(b.none, 8191); XCTAssertEqual(b.embeddingDim, 92)
        // round(0.5 * 89) = round(44.5) = 44 in Python (half to even), not 45.
        XCTAssertEqual(b.tokenizeCoordinates(0.5, 0), 44)
        XCTAssertEqual(b.tokenizeCoordinates(1, 1), 89 * 90 + 89)
        // Without objects: 30 none triples and the full crop's corners.
        XCTAssertEqual(try b.build([]), [Int](repeating: 8191, count: 90) + [0, 8099])
        let names = try OpenImagesCategories.names()
        XCTAssertEqual(names.count, 340); XCTAssertEqual(names.first, "Tortoise"); XCTAssertEqual(Set(names).count, 340)
        // A flag beyond the vocabulary is an error, not a silently wrong id.
        let small = try ObjectsBoundingBoxConditionalBuilder(noObjectClasses: 340, noMaxObjects: 2, noTokens: 300)
        XCTAssertThrowsError(try small.build([.init(categoryNo: 3, bbox: .init(corners: 0, 0, 1, 1), isInside: true)]))
    }
}
