import Foundation
import XCTest
@testable import TensorCore

// Every op against PyTorch (fixtures written by tools/fixtures/tensor_ops.py): forward values and the gradients of
// sum(output * R) with respect to each input.
// Tolerance (f32 parity): |ours - torch| <= 1e-4 * max(1, max|torch|), the bound for f32 parity; kernels use
// different summation orders and a polynomial exp/erf, which differ from libm by a few ulp.

struct Fixture: Decodable {
    struct Array: Decodable { let shape: [Int]; let f32: String }
    struct Case: Decodable {
        let name: String
        let inputs: [String: Array]
        let output: Array
        let r: Array
        let grads: [String: Array]
        let params: [String: ParamValue]
    }
    enum ParamValue: Decodable {
        case number(Double), bool(Bool), list([Double])
        init(from decoder: Decoder) throws {
            let c = try decoder.singleValueContainer()
            if let b = try? c.decode(Bool.self) { self = .bool(b) }
            else if let d = try? c.decode(Double.self) { self = .number(d) }
            else { self = .list(try c.decode([Double].self)) }
        }
        var double: Double { if case .number(let d) = self { return d }; return .nan }
        var ints: [Int] { if case .list(let l) = self { return l.map { Int($0) } }; return [] }
        var bool: Bool { if case .bool(let b) = self { return b }; return false }
    }
    let cases: [Case]

    static func load(_ name: String) throws -> Fixture {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/\(name)")
        return try JSONDecoder().decode(Fixture.self, from: Data(contentsOf: url))
    }
}

extension Fixture.Array {
    var tensor: Tensor {
        let bytes = Data(base64Encoded: f32)!
        let values = bytes.withUnsafeBytes { Swift.Array($0.bindMemory(to: Float.self)) }
        return Tensor(values, shape: shape)
    }
}

func assertClose(_ a: Tensor, _ b: Tensor, rtol: Float = 1e-4, _ what: String, file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertEqual(a.shape, b.shape, "\(what): shape", file: file, line: line)
    guard a.shape == b.shape else { return }
    let x = a.toArray(), y = b.toArray()
    let scale = max(1, y.map(abs).max() ?? 0)
    let err = zip(x, y).map { abs($0 - $1) }.max() ?? 0
    XCTAssertLessThanOrEqual(err, rtol * scale, "\(what): max abs error \(err) (scale \(scale))", file: file, line: line)
}

/// Runs fixture case `c` with our ops.
func applyFixtureOp(_ c: Fixture.Case, _ x: [String: Tensor]) -> Tensor {
        let p = c.params
        switch c.name {
        case "add_broadcast": return x["a"]! + x["b"]!
        case "sub": return x["a"]! - x["b"]!
        case "mul_broadcast": return x["a"]! * x["b"]!
        case "div": return x["a"]! / x["b"]!
        case "exp": return x["x"]!.exp()
        case "log": return x["x"]!.log()
        case "sqrt": return x["x"]!.sqrt()
        case "pow": return x["x"]!.pow(Float(p["p"]!.double))
        case "abs": return x["x"]!.abs()
        case "clamp": return x["x"]!.clamped(min: Float(p["lo"]!.double), max: Float(p["hi"]!.double))
        case "sum_axes": return x["x"]!.sum(axes: p["axes"]!.ints)
        case "mean_keepdim": return x["x"]!.mean(axes: p["axes"]!.ints, keepDims: true)
        case "var": return x["x"]!.variance(axes: p["axes"]!.ints)
        case "max_axis": return x["x"]!.max(axis: Int(p["axis"]!.double))
        case "matmul_batched": return matmul(x["a"]!, x["b"]!)
        case "matmul_transposed": return matmul(x["a"]!, x["b"]!.transposed())
        case "linear": return linear(x["x"]!, x["w"]!, x["b"]!)
        case let n where n.hasPrefix("conv2d"):
            var o = Conv2dOptions(stride: Int(p["stride"]!.double), dilation: Int(p["dilation"]!.double), groups: Int(p["groups"]!.double))
            let pad = p["padding"]!.ints
            o.padding = (pad[0], pad[1], pad[2], pad[3])
            return conv2d(x["x"]!, x["w"]!, x["b"], o)
        case "group_norm": return x["x"]!.groupNorm(groups: Int(p["groups"]!.double), weight: x["w"], bias: x["b"], eps: Float(p["eps"]!.double))
        case "group_norm_silu": return x["x"]!.groupNorm(groups: Int(p["groups"]!.double), weight: x["w"], bias: x["b"], eps: Float(p["eps"]!.double), silu: true)
        case "layer_norm": return x["x"]!.layerNorm(weight: x["w"], bias: x["b"], eps: Float(p["eps"]!.double))
        case "softmax": return x["x"]!.softmax()
        case "log_softmax": return x["x"]!.logSoftmax()
        case "silu": return x["x"]!.silu()
        case "gelu": return x["x"]!.gelu()
        case "gelu_tanh": return x["x"]!.gelu(.tanh)
        case "quick_gelu": return x["x"]!.quickGELU()
        case "sigmoid": return x["x"]!.sigmoid()
        case "tanh": return x["x"]!.tanh()
        case "upsample_nearest": let t = x["x"]!; return t.upsampleNearest(height: t.shape[2] * 2, width: t.shape[3] * 2)
        case "upsample_bilinear": return x["x"]!.upsampleBilinear(height: Int(p["h"]!.double), width: Int(p["w"]!.double))
        case "avg_pool": return x["x"]!.avgPool2d(kernel: 2)
        case "cat": return concat([x["a"]!, x["b"]!], axis: 1)
        case "mse": return mseLoss(x["a"]!, x["b"]!)
        case "l1": return l1Loss(x["a"]!, x["b"]!)
        case "pad": return x["x"]!.padded2d(left: 1, right: 2, top: 0, bottom: 3)
        case "embedding": return embedding(p["ids"]!.ints, shape: p["idsShape"]!.ints, weight: x["w"]!)
        case "gather": return x["x"]!.gather(axis: 1, index: p["index"]!.ints, indexShape: p["indexShape"]!.ints)
        case let n where n.hasPrefix("sdpa"): return scaledDotProductAttention(x["q"]!, x["k"]!, x["v"]!, causal: p["causal"]!.bool)
        default: fatalError("no Swift mapping for fixture case \(c.name)")
        }
}

final class OpParityTests: XCTestCase {
    func testEveryOpMatchesPyTorch() throws {
        let fixture = try Fixture.load("ops.json")
        XCTAssertGreaterThanOrEqual(fixture.cases.count, 40)
        for c in fixture.cases {
            let inputs = c.inputs.mapValues { $0.tensor.requiringGrad() }
            let y = applyFixtureOp(c, inputs)
            assertClose(y, c.output.tensor, "\(c.name) forward")
            (y * c.r.tensor).sum().backward()
            for (k, g) in c.grads {
                guard let ours = inputs[k]?.grad else { XCTFail("\(c.name): no gradient for \(k)"); continue }
                assertClose(ours, g.tensor, "\(c.name) d/d\(k)")
            }
        }
    }
}
