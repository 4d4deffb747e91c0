import Foundation
import TensorCore

// bf16 mixed precision in the manner of torch.autocast(device_type="cpu", dtype=torch.bfloat16) / Lightning's
// precision="bf16-mixed": float32 master weights (and optimizer state); inside the scope, the ops on torch's CPU
// lower_precision_fp list that our layers run (conv2d, linear; attention's projections are linears) take their
// inputs, weights and biases rounded to bfloat16 and return a bfloat16 result (round to nearest even, as
// `.to(torch.bfloat16)`), products accumulating in float32 as in oneDNN's / mkldnn's bf16 GEMMs. Normalizations,
// activations, softmax and losses run in float32 on those values. Gradients flow through the casts to the float32
// master weights; as in torch, a gradient reaching a bf16 tensor is bf16 (`Tensor.roundedToBFloat16`).
//
// Where the ISA level in use has bf16 arithmetic (CPUFeatures.nativeBF16: AVX512_BF16 or AMX), inference ops (no
// gradient recorded) run on oneDNN's native bf16 kernels (TensorCore's NativeBF16; 3x3 convolutions that take the
// Winograd path stay float32 there, see NativeBF16.keepsWinograd). Elsewhere, and for every op that records
// gradients, the products are computed by the float32 kernels on bf16-representable values: the numbers are those of
// bf16 compute (up to float32 summation order), the speed is float32's (a little slower: the rounding passes).
//
// Deliberate differences from torch's CPU autocast, which keeps every op that follows a bf16 op in bf16 (group_norm,
// layer_norm, silu, gelu, residual adds all round their outputs to bf16 there): here those run in float32 on the
// rounded values, as CUDA autocast does for the norms and softmax (its fp32 list); the fused attention keeps its
// probabilities in float32 (torch's CPU flash kernel rounds them to bf16 before P @ V) except for native-bf16
// inference, where attention computes as torch's kernel does (AttentionBF16.swift); VectorQuantizer's distance
// matmul (not a layer) stays float32; in inference a residual add that follows a linear layer or a 1x1 convolution
// (attention's to_out, the feed-forward's net.2, SD1's proj_out, resnet conv shortcuts) is made in that GEMM's float32
// accumulator, the product not rounded to bf16 before the add (`lowerPrecision(_:_:_:adding:_:fused:)`;
// LDM_BF16_FUSED_RESIDUAL=0 rounds it first). These are bf16-sized differences: one-step gradients differ from torch's by
// about as much as torch's bf16 differs from float32 (Tests/TrainingTests/MixedPrecisionTests.swift).

public enum Autocast {
    /// The lower-precision type of the current scope (nil: float32, autocast off). Global, like GradMode: the
    /// training loop runs on one driver thread and kernels never read it.
    public nonisolated(unsafe) static private(set) var dtype: DType?

    /// Runs `body` under bf16 autocast (nested scopes restore the outer state).
    public static func bf16<T>(_ body: () throws -> T) rethrows -> T { try scope(.bfloat16, body) }

    /// Runs `body` with autocast set to `dtype` (nil or .float32: off). Only bfloat16 is supported.
    public static func scope<T>(_ dtype: DType?, _ body: () throws -> T) rethrows -> T {
        precondition(dtype == nil || dtype == .float32 || dtype == .bfloat16, "Autocast: only bfloat16 is supported, got \(dtype!)")
        let saved = self.dtype
        self.dtype = dtype == .float32 ? nil : dtype
        defer { self.dtype = saved }
        return try NativeBF16.autocastScope(self.dtype == .bfloat16, body)
    }

    public static var isBF16: Bool { dtype == .bfloat16 }

    /// `op(x, weight, bias)` as a lower-precision op: inside a bf16 scope its inputs and its result rounded to bf16.
    public static func lowerPrecision(_ x: Tensor, _ weight: Tensor, _ bias: Tensor?,
                                      _ op: (Tensor, Tensor, Tensor?) -> Tensor) -> Tensor {
        guard isBF16 else { return op(x, weight, bias) }
        if NativeBF16.couldApply([x, weight] + (bias.map { [$0] } ?? [])) {
            // The kernels round their inputs to bf16 themselves; the fresh result is rounded where it lies.
            return NativeBF16.scope { op(x, weight, bias) }.roundingToBFloat16InPlace()
        }
        return cast(op(cast(x), cast(weight), cast(bias)))
    }

    /// `then(lowerPrecision(x, weight, bias, op))`, except in native bf16 inference, where the fresh float32 product goes
    /// unrounded to `roundingThen`: `then` for a consumer that rounds its input to bf16 itself as it reads it (the same
    /// values, one pass over the product less).
    public static func lowerPrecision(_ x: Tensor, _ weight: Tensor, _ bias: Tensor?, _ op: (Tensor, Tensor, Tensor?) -> Tensor,
                                      then: (Tensor) -> Tensor, roundingThen: (Tensor) -> Tensor) -> Tensor {
        guard isBF16, NativeBF16.couldApply([x, weight] + (bias.map { [$0] } ?? [])) else { return then(lowerPrecision(x, weight, bias, op)) }
        return roundingThen(NativeBF16.scope { op(x, weight, bias) })
    }

    /// `op(x, weight, bias) + residual`, where `fused(x, weight, bias, residual)` computes that sum with the residual
    /// added in the op's float32 accumulator (TensorCore's `linear` / `conv2d` `adding:`). Inside a bf16 scope, in
    /// inference (no gradient recorded), the inputs, weight and bias are bf16 as in `lowerPrecision` but the product is
    /// not rounded to bf16 before the float32 residual add (torch's CPU autocast rounds it, then adds in bf16): one
    /// rounding less, the sum as float32 as our other residual adds. On native bf16 `fused` runs on the bf16 kernels,
    /// elsewhere on the float32 ones with the operands rounded. Recording gradients, or with `LDM_BF16_FUSED_RESIDUAL=0`
    /// (`fusesResidual`), it is `lowerPrecision(...) + residual`, torch's rounding.
    public static func lowerPrecision(_ x: Tensor, _ weight: Tensor, _ bias: Tensor?, adding residual: Tensor,
                                      _ op: (Tensor, Tensor, Tensor?) -> Tensor,
                                      fused: (Tensor, Tensor, Tensor?, Tensor) -> Tensor) -> Tensor {
        guard isBF16 else { return fused(x, weight, bias, residual) }
        let operands = [x, weight, residual] + (bias.map { [$0] } ?? [])
        guard fusesResidual, !GradMode.shouldRecord(operands) else { return lowerPrecision(x, weight, bias, op) + residual }
        if NativeBF16.available { return NativeBF16.scope { fused(x, weight, bias, residual) } }
        return fused(cast(x), cast(weight), cast(bias), residual)
    }
    /// Whether bf16 inference adds residuals in the GEMMs' accumulators (`lowerPrecision(_:_:_:adding:_:fused:)`);
    /// `LDM_BF16_FUSED_RESIDUAL=0` rounds the product first and adds after, as torch's CPU autocast does.
    public nonisolated(unsafe) static var fusesResidual = ProcessInfo.processInfo.environment["LDM_BF16_FUSED_RESIDUAL"] != "0"

    /// `t` as the lower-precision op sees it: rounded to bf16 inside a bf16 scope, unchanged otherwise.
    @inline(__always) private static func cast(_ t: Tensor) -> Tensor { isBF16 ? t.roundedToBFloat16() : t }
    @inline(__always) private static func cast(_ t: Tensor?) -> Tensor? { isBF16 ? t.map { $0.roundedToBFloat16() } : t }
}

/// The compute precision of generation (`ldm txt2img --precision`, and for library users around a pipeline call):
/// `auto` is bf16 where the CPU computes bf16 natively (AVX512_BF16 / AMX at the ISA level in use), float32
/// elsewhere; `bf16` on a CPU without native bf16 is emulated on the float32 kernels (same numbers, slower). `int8`:
/// the UNet's Linear/Conv2d weights quantised to int8 once at load (`Module.quantizeToInt8`, which the caller does:
/// Pipelines' `ModelBundle.quantizeUNetToInt8`) and run on the int8 VNNI kernels, everything else in float32; it
/// needs `Int8Compute.available`.
public enum ComputePrecision: String, CaseIterable, Sendable {
    case auto, f32, bf16, int8

    /// What `self` means on this CPU (int8: the float32 compute of what is not quantised).
    public var resolved: DType {
        switch self {
        case .f32, .int8: return .float32
        case .bf16: return .bfloat16
        case .auto: return NativeBF16.available ? .bfloat16 : .float32
        }
    }
    /// Whether `resolved` is bf16 computed natively.
    public var isNative: Bool { resolved == .bfloat16 && NativeBF16.available }

    /// Runs `body` (inference) at this precision: the lower-precision ops (convolutions, linear layers) in bf16 under
    /// autocast, everything else in float32.
    public func run<T>(_ body: () throws -> T) rethrows -> T { try Autocast.scope(resolved, body) }
}
