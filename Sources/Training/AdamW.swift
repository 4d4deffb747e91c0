// Matches torch.optim.AdamW (torch/optim/adamw.py, single-tensor path: decoupled weight decay, bias correction),
// torch.nn.utils.clip_grad_norm_ (torch/nn/utils/clip_grad.py) and diffusers get_scheduler's warm-up schedules
// (diffusers/optimization.py). Parameters are updated in place; state is keyed by state_dict name.
import Foundation
import NeuralNetwork
import TensorCore

/// torch.optim.AdamW over a module's named parameters.
public final class AdamW {
    public var lr: Double
    public let beta1: Double, beta2: Double, eps: Double, weightDecay: Double
    /// Number of optimizer steps taken (torch's per-parameter `state["step"]`, shared here).
    public private(set) var stepCount = 0
    /// (name, parameter) in a stable order.
    public let parameters: [(String, Tensor)]
    /// exp_avg / exp_avg_sq per parameter name (created on the first step, as torch does lazily).
    public private(set) var expAvg: [String: Tensor] = [:]
    public private(set) var expAvgSq: [String: Tensor] = [:]

    public init(parameters: [(String, Tensor)], lr: Double = 1e-3, betas: (Double, Double) = (0.9, 0.999),
                eps: Double = 1e-8, weightDecay: Double = 1e-2) throws {
        guard lr >= 0, eps >= 0, weightDecay >= 0, (0..<1).contains(betas.0), (0..<1).contains(betas.1) else {
            throw TrainingError("AdamW: invalid hyper-parameters lr=\(lr) betas=\(betas) eps=\(eps) weight_decay=\(weightDecay)")
        }
        for (name, p) in parameters where p.dtype != .float32 || !p.isContiguous {
            throw TrainingError("AdamW: parameter \(name) must be contiguous float32 to be trained")
        }
        self.parameters = parameters
        self.lr = lr
        beta1 = betas.0
        beta2 = betas.1
        self.eps = eps
        self.weightDecay = weightDecay
    }

    public convenience init(module: Module, lr: Double = 1e-3, betas: (Double, Double) = (0.9, 0.999),
                            eps: Double = 1e-8, weightDecay: Double = 1e-2) throws {
        try self.init(parameters: module.namedParameters, lr: lr, betas: betas, eps: eps, weightDecay: weightDecay)
    }

    /// optimizer.zero_grad(set_to_none=True)
    public func zeroGrad() { for (_, p) in parameters { p.zeroGrad() } }

    /// One AdamW step on every parameter that has a gradient.
    public func step() {
        stepCount += 1
        let bc1 = 1 - pow(beta1, Double(stepCount)), bc2Sqrt = (1 - pow(beta2, Double(stepCount))).squareRoot()
        let decay = Float(1 - lr * weightDecay), w1 = Float(1 - beta1), b2 = Float(beta2), w2 = Float(1 - beta2)
        let stepSize = Float(-(lr / bc1)), bc2 = Float(bc2Sqrt), epsF = Float(eps)
        for (name, p) in parameters {
            guard let g0 = p.grad else { continue }
            let g = g0.float32().contiguous()
            let m = expAvg[name] ?? Tensor(zeros: p.shape), v = expAvgSq[name] ?? Tensor(zeros: p.shape)
            expAvg[name] = m
            expAvgSq[name] = v
            withExtendedLifetime((g, m, v, p)) {
                let pp = p.data, gp = g.data, mp = m.data, vp = v.data
                for i in 0..<p.count {
                    pp[i] *= decay
                    let gi = gp[i]
                    mp[i] += w1 * (gi - mp[i])                       // exp_avg.lerp_(grad, 1 - beta1)
                    vp[i] = vp[i] * b2 + w2 * (gi * gi)              // exp_avg_sq.mul_(beta2).addcmul_(grad, grad, 1 - beta2)
                    let denom = vp[i].squareRoot() / bc2 + epsF
                    pp[i] += stepSize * (mp[i] / denom)              // param.addcdiv_(exp_avg, denom, -lr / bc1)
                }
            }
            p.bumpVersion()
        }
    }

    /// Moments and step for checkpoints ("exp_avg.<name>", "exp_avg_sq.<name>").
    public var stateTensors: [(String, Tensor)] {
        parameters.compactMap { name, _ in expAvg[name].map { ("exp_avg.\(name)", $0) } }
            + parameters.compactMap { name, _ in expAvgSq[name].map { ("exp_avg_sq.\(name)", $0) } }
    }

    /// Restores what `stateTensors` and `stepCount` saved (copies, so the caller's tensors are not aliased).
    public func restore(state: [String: Tensor], stepCount: Int) throws {
        var m: [String: Tensor] = [:], v: [String: Tensor] = [:]
        for (name, p) in parameters {
            switch (state["exp_avg.\(name)"], state["exp_avg_sq.\(name)"]) {
            case let (a?, b?):
                guard a.shape == p.shape, b.shape == p.shape else { throw TrainingError("AdamW state for \(name) has shape \(a.shape), parameter is \(p.shape)") }
                m[name] = a.float32().contiguous().copied()
                v[name] = b.float32().contiguous().copied()
            case (nil, nil): continue
            default: throw TrainingError("AdamW state for \(name) is incomplete")
            }
        }
        guard stepCount >= 0 else { throw TrainingError("AdamW step count \(stepCount) is negative") }
        expAvg = m
        expAvgSq = v
        self.stepCount = stepCount
    }
}

extension Tensor {
    /// A fresh contiguous float32 copy.
    func copied() -> Tensor {
        let out = Tensor(zeros: shape)
        out.assign(self)
        return out
    }
}

/// torch.nn.utils.clip_grad_norm_(parameters, maxNorm) with the L2 norm: scales every gradient by
/// min(1, maxNorm / (total_norm + 1e-6)) and returns total_norm. Parameters without gradients are skipped.
@discardableResult
public func clipGradNorm(_ parameters: [Tensor], maxNorm: Float) -> Float {
    let grads = parameters.compactMap { $0.grad }
    guard !grads.isEmpty else { return 0 }
    var total: Double = 0
    for g in grads {
        let n = g.float32().toArray().reduce(into: Double(0)) { $0 += Double($1) * Double($1) }
        let nf = Double(Float(n.squareRoot()))       // per-tensor norms are float32, then the norm of the norms
        total += nf * nf
    }
    let totalNorm = Float(total.squareRoot())
    let coef = min(Float(1), maxNorm / (totalNorm + 1e-6))
    for p in parameters {
        guard let g = p.grad else { continue }
        p.grad = GradMode.noGrad { g.float32() * coef }
    }
    return totalNorm
}

/// Learning-rate multipliers of diffusers `get_scheduler` (lr = base_lr * multiplier(step), step counted from 0).
public enum LRSchedule: Equatable, Sendable {
    case constant
    case constantWithWarmup(warmup: Int)
    case linear(warmup: Int, total: Int)
    case cosine(warmup: Int, total: Int, cycles: Double = 0.5)

    public init(name: String, warmup: Int, total: Int) throws {
        guard warmup >= 0, total >= 0 else { throw TrainingError("lr schedule: negative warm-up or total steps") }
        switch name {
        case "constant": self = warmup > 0 ? .constantWithWarmup(warmup: warmup) : .constant
        case "constant_with_warmup": self = .constantWithWarmup(warmup: warmup)
        case "linear": self = .linear(warmup: warmup, total: total)
        case "cosine": self = .cosine(warmup: warmup, total: total)
        default: throw TrainingError("lr schedule \"\(name)\" is not one of constant, constant_with_warmup, linear, cosine")
        }
    }

    public func multiplier(step: Int) -> Double {
        func warm(_ w: Int) -> Double? { step < w ? Double(step) / Double(max(1, w)) : nil }
        switch self {
        case .constant: return 1
        case let .constantWithWarmup(w): return warm(w) ?? 1
        case let .linear(w, total):
            return warm(w) ?? max(0, Double(total - step) / Double(max(1, total - w)))
        case let .cosine(w, total, cycles):
            if let x = warm(w) { return x }
            let progress = Double(step - w) / Double(max(1, total - w))
            return max(0, 0.5 * (1 + cos(Double.pi * cycles * 2 * progress)))
        }
    }
}
