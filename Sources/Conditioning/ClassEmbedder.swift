import Checkpoints
import NeuralNetwork
import TensorCore

// Matches CompVis ldm/modules/encoders/modules.py `ClassEmbedder`: nn.Embedding(n_classes, embed_dim) applied to
// batch['class'][:, None] -> (B, 1, D), used as cross-attention context by the class-conditional ImageNet LDM.
// For classifier-free guidance the unconditional class is the extra last one, n_classes - 1
// (get_unconditional_conditioning: "1000 classes --> 0 ... 999, one extra class for ucg (class 1000)").

public final class ClassEmbedder: Module {
    public let embedding: Embedding
    public let nClasses: Int

    public init(embedDim: Int, nClasses: Int = 1000) {
        self.nClasses = nClasses
        embedding = Embedding(nClasses, embedDim)
    }

    /// (B) class indices -> (B, 1, embed_dim).
    public func callAsFunction(_ classes: [Int]) throws -> Tensor {
        guard !classes.isEmpty, classes.allSatisfy({ $0 >= 0 && $0 < nClasses }) else {
            throw ConditioningError("ClassEmbedder: class labels \(classes) must be non-empty and within 0..<\(nClasses)")
        }
        return embedding(classes, shape: [classes.count, 1])
    }

    /// The class used for the unconditional branch of classifier-free guidance.
    public var unconditionalClass: Int { nClasses - 1 }

    public func unconditionalConditioning(batchSize: Int) throws -> Tensor {
        try self([Int](repeating: unconditionalClass, count: batchSize))
    }

    public var namedParameters: [(String, Tensor)] { scoped("embedding", embedding) }

    /// CompVis checkpoints store it as cond_stage_model.embedding.weight.
    public static let compVisKeyRules: [KeyRule] = [.stripPrefix("cond_stage_model.")]
}
