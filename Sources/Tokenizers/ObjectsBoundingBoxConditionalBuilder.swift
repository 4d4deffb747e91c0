// Layouts (objects with a class and a bounding box) as token sequences, as taming-transformers'
// taming/data/conditional_builder/objects_bbox.py ObjectsBoundingBoxConditionalBuilder (with objects_center_points.py
// ObjectsCenterPointsConditionalBuilder and utils.py) builds them; the CompVis layout-to-image LDM
// (models/ldm/layout2img-openimages256, cond_stage_key coordinates_bbox) feeds that sequence to its BERTEmbedder
// (use_tokenizer: false) as token ids.
//   build(annotations, crop_coordinates=None, horizontal_flip=False):
//     annotations[:no_max_objects]; random.shuffle(annotations); keep those whose box intersects the crop (area > 0);
//     encode_crop: boxes rescaled to the full image (clamped to [0, 1]), flipped if asked, and the crop's two corner
//     tokens appended; otherwise boxes rescaled into the crop; per object (representation, token(x0, y0),
//     token(x0 + w, y0 + h)), padded with (none, none, none) to no_max_objects; every token < no_tokens.
//   representation = category_no + no_object_classes * modifier, modifier bits: 1 group_of (use_group_parameter),
//     2 occluded, 4 depiction, 8 inside (use_additional_parameters);
//   token(x, y) = round(y * (S - 1)) * S + round(x * (S - 1)), S = int(sqrt(no_tokens)), Python's round (half to even);
//   none = no_tokens - 1.
// The shuffle is a training augmentation: here objects keep the caller's order unless `order` rearranges them where
// taming shuffles (after truncation, before filtering). Boxes are (x0, y0, w, h) as taming's BoundingBox; from
// corners, w = x1 - x0 as taming's Open Images loader computes it (the corner token then uses x0 + w, like taming).
// The released layout model's data module (ldm.data.openimages -> rdm's OpenImagesBBoxBase, not in latent-diffusion)
// uses a CoordinatesBoundingBoxConditionalBuilder of the same triples, padding and crop tokens; with encode_crop it
// truncates after shuffling and keeps boxes that miss the crop. For what `ldm layout` accepts (at most no_max_objects
// boxes inside [0, 1] with positive area) both give these tokens.
import Foundation

public struct ObjectsBoundingBoxConditionalBuilder: Equatable, Sendable {
    /// taming's BoundingBox: (x0, y0, width, height), relative to the image.
    public struct BoundingBox: Equatable, Sendable {
        public var x0, y0, width, height: Double
        public init(x0: Double, y0: Double, width: Double, height: Double) {
            self.x0 = x0
            self.y0 = y0
            self.width = width
            self.height = height
        }
        /// From corners, as taming's Open Images loader: width = XMax - XMin, height = YMax - YMin.
        public init(corners x0: Double, _ y0: Double, _ x1: Double, _ y1: Double) {
            self.init(x0: x0, y0: y0, width: x1 - x0, height: y1 - y0)
        }
        public static let fullCrop = BoundingBox(x0: 0, y0: 0, width: 1, height: 1)
    }

    /// The parts of taming's Annotation the builder reads.
    public struct Annotation: Equatable, Sendable {
        public var categoryNo: Int
        public var bbox: BoundingBox
        public var isGroupOf, isOccluded, isDepiction, isInside: Bool
        public init(categoryNo: Int, bbox: BoundingBox, isGroupOf: Bool = false, isOccluded: Bool = false,
                    isDepiction: Bool = false, isInside: Bool = false) {
            self.categoryNo = categoryNo
            self.bbox = bbox
            self.isGroupOf = isGroupOf
            self.isOccluded = isOccluded
            self.isDepiction = isDepiction
            self.isInside = isInside
        }
    }

    public struct BuildError: Error, CustomStringConvertible, Equatable {
        public let description: String
        init(_ d: String) { description = d }
    }

    public let noObjectClasses, noMaxObjects, noTokens: Int
    public let encodeCrop, useGroupParameter, useAdditionalParameters: Bool

    /// Open Images as taming's open_images_scene_images_transformer.yaml and CompVis' layout model use it: 8192
    /// tokens, 30 objects, crop encoded (30 * 3 + 2 = 92 = the BERTEmbedder's max_seq_len), group and additional
    /// parameters on; `noObjectClasses` defaults to the 340 classes of `OpenImagesCategories`.
    public init(noObjectClasses: Int = OpenImagesCategories.count, noMaxObjects: Int = 30, noTokens: Int = 8192,
                encodeCrop: Bool = true, useGroupParameter: Bool = true, useAdditionalParameters: Bool = true) throws {
        guard noObjectClasses > 0, noMaxObjects >= 0, noTokens >= 4 else {
            throw BuildError("objects-bbox builder: no_object_classes must be positive, no_max_objects >= 0, no_tokens >= 4")
        }
        self.noObjectClasses = noObjectClasses
        self.noMaxObjects = noMaxObjects
        self.noTokens = noTokens
        self.encodeCrop = encodeCrop
        self.useGroupParameter = useGroupParameter
        self.useAdditionalParameters = useAdditionalParameters
    }

    /// no_sections = int(math.sqrt(no_tokens)).
    public var noSections: Int {
        var s = Int(Double(noTokens).squareRoot())
        while s * s > noTokens { s -= 1 }
        while (s + 1) * (s + 1) <= noTokens { s += 1 }
        return s
    }
    public var none: Int { noTokens - 1 }
    /// no_max_objects * 3 (+ 2 crop tokens).
    public var embeddingDim: Int { noMaxObjects * 3 + (encodeCrop ? 2 : 0) }

    public func tokenizeCoordinates(_ x: Double, _ y: Double) -> Int {
        let s = Double(noSections - 1)
        // int(round(v)): Python rounds half to even.
        return Int((y * s).rounded(.toNearestOrEven)) * noSections + Int((x * s).rounded(.toNearestOrEven))
    }

    public func tokenPair(_ b: BoundingBox) -> (Int, Int) {
        (tokenizeCoordinates(b.x0, b.y0), tokenizeCoordinates(b.x0 + b.width, b.y0 + b.height))
    }

    public func objectRepresentation(_ a: Annotation) -> Int {
        var modifier = 0
        if useGroupParameter, a.isGroupOf { modifier |= 1 }
        if useAdditionalParameters {
            if a.isOccluded { modifier |= 2 }
            if a.isDepiction { modifier |= 4 }
            if a.isInside { modifier |= 8 }
        }
        return a.categoryNo + noObjectClasses * modifier
    }

    /// utils.intersection_area.
    static func intersectionArea(_ r1: BoundingBox, _ r2: BoundingBox) -> Double {
        let xOverlap = max(0, min(r1.x0 + r1.width, r2.x0 + r2.width) - max(r1.x0, r2.x0))
        let yOverlap = max(0, min(r1.y0 + r1.height, r2.y0 + r2.height) - max(r1.y0, r2.y0))
        return xOverlap * yOverlap
    }

    /// utils.rescale_annotations' rescale_bbox.
    static func rescale(_ b: BoundingBox, crop c: BoundingBox, flip: Bool) -> BoundingBox {
        func clamp(_ x: Double) -> Double { max(min(x, 1), 0) }
        var x0 = clamp((b.x0 - c.x0) / c.width)
        let y0 = clamp((b.y0 - c.y0) / c.height)
        let w = min(b.width / c.width, 1 - x0)
        let h = min(b.height / c.height, 1 - y0)
        if flip { x0 = 1 - (x0 + w) }
        return BoundingBox(x0: x0, y0: y0, width: w, height: h)
    }

    /// ObjectsCenterPointsConditionalBuilder.build with ObjectsBoundingBoxConditionalBuilder's object triples.
    /// `order` takes the place of taming's random.shuffle (applied to the objects kept after truncation).
    public func build(_ annotations: [Annotation], crop: BoundingBox? = nil, horizontalFlip: Bool = false,
                      order: ((inout [Annotation]) -> Void)? = nil) throws -> [Int] {
        var anns = Array(annotations.prefix(noMaxObjects))
        order?(&anns)
        // `if not crop_coordinates`: None (or an empty tuple) means the full image.
        var crop = crop ?? .fullCrop
        anns = anns.filter { Self.intersectionArea($0.bbox, crop) > 0 }
        var extra: [Int] = []
        if encodeCrop {
            anns = anns.map {
                var a = $0
                a.bbox = Self.rescale(a.bbox, crop: .fullCrop, flip: horizontalFlip)
                return a
            }
            if horizontalFlip { crop = BoundingBox(x0: 1 - (crop.x0 + crop.width), y0: crop.y0, width: crop.width, height: crop.height) }
            let (a, b) = tokenPair(crop)
            extra = [a, b]
        } else {
            anns = anns.map {
                var a = $0
                a.bbox = Self.rescale(a.bbox, crop: crop, flip: horizontalFlip)
                return a
            }
        }
        var tokens: [Int] = []
        tokens.reserveCapacity(embeddingDim)
        for a in anns {
            let (tl, br) = tokenPair(a.bbox)
            tokens += [objectRepresentation(a), tl, br]
        }
        tokens += [Int](repeating: none, count: 3 * (noMaxObjects - anns.count)) + extra
        assert(tokens.count == embeddingDim)
        if let bad = tokens.first(where: { $0 < 0 || $0 >= noTokens }) {
            throw BuildError("objects-bbox builder: token \(bad) is outside 0..<\(noTokens) (no_tokens, the model's vocabulary): an object's "
                             + "token is its class + \(noObjectClasses) * its flag bits (group_of 1, occluded 2, depiction 4, inside 8)")
        }
        return tokens
    }
}

/// The Open Images categories of taming's open_images_scene_images_transformer.yaml in category_no order:
/// class-descriptions-boxable.csv filtered to open_images_helper's top_300_classes_plus_coco_compatibility names,
/// without the ids its COCO unification maps away, sorted by id with /m/01s55n last (AnnotatedObjectsDataset
/// filter_categories + setup_category_id_and_number). Written by tools/fixtures/compvis_layout.py from taming's code.
public enum OpenImagesCategories {
    public static let count = 340

    /// The 340 names, index = category number.
    public static func names() throws -> [String] {
        guard let url = Bundle.module.url(forResource: "openimages-categories", withExtension: "txt", subdirectory: "Resources") else {
            throw TokenizerError.unreadableFile("openimages-categories.txt", "not in the Tokenizers bundle")
        }
        let names = try readTextFile(url).split(separator: "\n").map(String.init)
        guard names.count == count else { throw TokenizerError.invalidVocabulary("openimages-categories.txt has \(names.count) names, expected \(count)") }
        return names
    }
}
