import Foundation

// Activations of torch.nn.functional with their derivatives: silu (swish), gelu (erf and tanh forms), CLIP's
// quick_gelu, sigmoid, tanh, relu, leaky_relu, softplus.

public enum GELUApproximation: String, Sendable { case none, tanh }

extension Tensor {
    public func silu() -> Tensor {
        let x = self
        return mapKernel(x) { $0 * fastSigmoid($0) }.recorded("silu", [x]) { g in
            [g * mapKernel(x) { v in let s = fastSigmoid(v); return s * (1 + v * (1 - s)) }]
        }
    }
    public func sigmoid() -> Tensor {
        let y = mapKernel(self, fastSigmoid)
        return y.recorded("sigmoid", [self]) { g in [g * mapKernel(y) { $0 * (1 - $0) }] }
    }
    public func tanh() -> Tensor {
        let y = mapKernel(self, fastTanh)
        return y.recorded("tanh", [self]) { g in [g * mapKernel(y) { 1 - $0 * $0 }] }
    }
    public func relu() -> Tensor {
        let x = self
        return mapKernel(x) { Swift.max($0, 0) }.recorded("relu", [x]) { g in [g * mapKernel(x) { $0 > 0 ? 1 : 0 }] }
    }
    /// F.leaky_relu(x, slope); the backward takes the slope where x <= 0 (as leaky_relu_backward).
    public func leakyReLU(_ slope: Float = 0.01) -> Tensor {
        let x = self
        return mapKernel(x) { $0 > 0 ? $0 : $0 * slope }.recorded("leaky_relu", [x]) { g in [g * mapKernel(x) { $0 > 0 ? 1 : slope }] }
    }
    /// F.softplus(x) with beta 1, threshold 20 (x itself above the threshold).
    public func softplus() -> Tensor {
        let x = self
        return mapKernel(x) { $0 > 20 ? $0 : Foundation.log1p(Foundation.exp($0)) }.recorded("softplus", [x]) { g in
            [g * mapKernel(x) { v in v > 20 ? 1 : { let z = Foundation.exp(v); return z / (z + 1) }() }]
        }
    }
    /// F.gelu(x, approximate=...).
    public func gelu(_ approximate: GELUApproximation = .none) -> Tensor {
        let x = self
        let k: Float = 0.7978845608 // sqrt(2/pi)
        switch approximate {
        case .none:
            return mapKernel(x) { 0.5 * $0 * (1 + fastErf($0 * 0.7071067812)) }.recorded("gelu", [x]) { g in
                [g * mapKernel(x) { v in 0.5 * (1 + fastErf(v * 0.7071067812)) + v * 0.3989422804 * fastExp(-0.5 * v * v) }]
            }
        case .tanh:
            return mapKernel(x) { v in 0.5 * v * (1 + fastTanh(k * (v + 0.044715 * v * v * v))) }.recorded("gelu_tanh", [x]) { g in
                [g * mapKernel(x) { v in
                    let t = fastTanh(k * (v + 0.044715 * v * v * v))
                    return 0.5 * (1 + t) + 0.5 * v * (1 - t * t) * k * (1 + 3 * 0.044715 * v * v)
                }]
            }
        }
    }
    /// CLIP's quick_gelu: x * sigmoid(1.702 x).
    public func quickGELU() -> Tensor {
        let x = self
        return mapKernel(x) { $0 * fastSigmoid(1.702 * $0) }.recorded("quick_gelu", [x]) { g in
            [g * mapKernel(x) { v in let s = fastSigmoid(1.702 * v); return s + 1.702 * v * s * (1 - s) }]
        }
    }
}
