import Foundation
import CKernels

// Activations of torch.nn.functional with their derivatives: silu (swish), gelu (erf and tanh forms), CLIP's
// quick_gelu, sigmoid, tanh, relu, leaky_relu, softplus.

public enum GELUApproximation: String, Sendable { case none, tanh }

extension Tensor {
    public func silu() -> Tensor { activation(CK_SILU, "silu") }
    public func sigmoid() -> Tensor { activation(CK_SIGMOID, "sigmoid") }
    public func tanh() -> Tensor { activation(CK_TANH, "tanh") }
    /// An activation computed by the C kernels, its backward one fused pass g * f'(x).
    private func activation(_ op: ck_activation, _ name: String) -> Tensor {
        let x = self
        return activationKernel(x, op).recorded(name, [x]) { g in [activationBackwardKernel(g, x, op)] }
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
            [g * mapKernel(x) { v in
                v > 20 ? 1 : {
                    let z = Foundation.exp(v)
                    return z / (z + 1)
                }()
            }]
        }
    }
    /// F.gelu(x, approximate=...).
    public func gelu(_ approximate: GELUApproximation = .none) -> Tensor {
        switch approximate {
        case .none: return activation(CK_GELU_ERF, "gelu")
        case .tanh: return activation(CK_GELU_TANH, "gelu_tanh")
        }
    }
    /// CLIP's quick_gelu: x * sigmoid(1.702 x).
    public func quickGELU() -> Tensor { activation(CK_QUICK_GELU, "quick_gelu") }
    /// GEGLU (diffusers' activations.GEGLU): the last axis holds [hidden | gate]; returns hidden * gelu(gate) (erf
    /// form), one fused pass forward and one backward (instead of chunk, a copy of the strided gate, gelu, a strided
    /// product, and their backward scattering into a zeroed gradient).
    public func geglu() -> Tensor { OpTimes.measure("geglu") { gegluOp() } }

    /// geglu() of this tensor's values rounded to bfloat16, returned rounded to bfloat16 as a bf16 tensor (nearest even):
    /// in one pass what rounding the input, geglu() and a bf16 GEMM's conversion of its input compute separately (the
    /// native-bf16 FeedForward, whose net.2 reads the bf16 tensor as is). Inference only: no gradient is recorded.
    public func gegluToBFloat16() -> Tensor {
        OpTimes.measure("geglu -> bf16") {
            precondition(!GradMode.shouldRecord([self]), "gegluToBFloat16: inference only")
            let x = float32().contiguous(), width = shape.last ?? 0
            precondition(rank >= 1 && width % 2 == 0, "geglu: last axis of \(shape) must be even")
            let n = width / 2, rows = count / Swift.max(width, 1)
            let out = Tensor(storage: Storage(byteCount: rows * n * 2), shape: Array(shape.dropLast()) + [n], dtype: .bfloat16)
            let xp = x.data, yp = out.storage.base.assumingMemoryBound(to: UInt16.self)
            withExtendedLifetime(x) {
                Parallel.forRange(rows, costPerItem: n * 30) { r in ck_geglu_forward_bf16(xp + r.lowerBound * 2 * n, yp + r.lowerBound * n, r.count, n) }
            }
            return out
        }
    }

    private func gegluOp() -> Tensor {
        let x = self.float32().contiguous()
        let width = shape.last ?? 0
        precondition(rank >= 1 && width % 2 == 0, "geglu: last axis of \(shape) must be even")
        let n = width / 2, rows = count / Swift.max(width, 1)
        let out = Tensor.empty(Array(shape.dropLast()) + [n])
        let xp = x.data, yp = out.data
        Parallel.forRange(rows, costPerItem: n * 30) { r in ck_geglu_forward(xp + r.lowerBound * 2 * n, yp + r.lowerBound * n, r.count, n) }
        return out.recorded("geglu", [self]) { g in
            let gc = g.float32().contiguous()
            let dx = Tensor.empty(x.shape)
            let gp = gc.data, dp = dx.data
            Parallel.forRange(rows, costPerItem: n * 60) { r in
                ck_geglu_backward(xp + r.lowerBound * 2 * n, gp + r.lowerBound * n, dp + r.lowerBound * 2 * n, r.count, n)
            }
            withExtendedLifetime((x, gc)) {}
            return [dx]
        }
    }
}
