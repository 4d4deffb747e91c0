import Foundation

// Elementwise arithmetic with broadcasting and the unary maths of torch (exp, log, sqrt, pow, abs, clamp ...),
// each with its backward. Gradients of broadcast operands are summed back to the operand's shape.

extension Tensor {
    public static func + (a: Tensor, b: Tensor) -> Tensor {
        zipKernel(a, b, +).recorded("add", [a, b]) { g in [g.sum(toShape: a.shape), g.sum(toShape: b.shape)] }
    }
    public static func - (a: Tensor, b: Tensor) -> Tensor {
        zipKernel(a, b, -).recorded("sub", [a, b]) { g in [g.sum(toShape: a.shape), (-g).sum(toShape: b.shape)] }
    }
    public static func * (a: Tensor, b: Tensor) -> Tensor {
        zipKernel(a, b, *).recorded("mul", [a, b]) { g in
            [a.requiresGrad ? (g * b).sum(toShape: a.shape) : nil, b.requiresGrad ? (g * a).sum(toShape: b.shape) : nil]
        }
    }
    public static func / (a: Tensor, b: Tensor) -> Tensor {
        zipKernel(a, b, /).recorded("div", [a, b]) { g in
            [a.requiresGrad ? (g / b).sum(toShape: a.shape) : nil,
             b.requiresGrad ? (-(g * a) / (b * b)).sum(toShape: b.shape) : nil]
        }
    }
    public static prefix func - (a: Tensor) -> Tensor { mapKernel(a) { -$0 }.recorded("neg", [a]) { g in [-g] } }

    public static func + (a: Tensor, s: Float) -> Tensor { mapKernel(a) { $0 + s }.recorded("add_scalar", [a]) { g in [g] } }
    public static func - (a: Tensor, s: Float) -> Tensor { a + (-s) }
    public static func * (a: Tensor, s: Float) -> Tensor { mapKernel(a) { $0 * s }.recorded("mul_scalar", [a]) { g in [g * s] } }
    public static func / (a: Tensor, s: Float) -> Tensor { a * (1 / s) }
    public static func + (s: Float, a: Tensor) -> Tensor { a + s }
    public static func * (s: Float, a: Tensor) -> Tensor { a * s }
    public static func - (s: Float, a: Tensor) -> Tensor { (-a) + s }

    /// Elementwise maximum/minimum (ties send the gradient to `self`, as torch.maximum splits it; documented difference:
    /// torch gives half to each on exact ties).
    public func maximum(_ b: Tensor) -> Tensor {
        let a = self
        return zipKernel(a, b) { Swift.max($0, $1) }.recorded("maximum", [a, b]) { g in
            let ma = zipKernel(a, b) { $0 >= $1 ? 1 : 0 }
            return [(g * ma).sum(toShape: a.shape), (g * (1 - ma)).sum(toShape: b.shape)]
        }
    }

    // MARK: unary maths

    public func exp() -> Tensor {
        let y = mapKernel(self) { Foundation.exp($0) }
        return y.recorded("exp", [self]) { g in [g * y] }
    }
    public func log() -> Tensor {
        let x = self
        return mapKernel(x) { Foundation.log($0) }.recorded("log", [x]) { g in [g / x] }
    }
    public func sqrt() -> Tensor {
        let y = mapKernel(self) { $0.squareRoot() }
        return y.recorded("sqrt", [self]) { g in [g / (y * 2)] }
    }
    public func rsqrt() -> Tensor {
        let y = mapKernel(self) { 1 / $0.squareRoot() }
        return y.recorded("rsqrt", [self]) { g in [g * y * y * y * -0.5] }
    }
    public func square() -> Tensor {
        let x = self
        return mapKernel(x) { $0 * $0 }.recorded("square", [x]) { g in [g * x * 2] }
    }
    public func abs() -> Tensor {
        let x = self
        return mapKernel(x) { Swift.abs($0) }.recorded("abs", [x]) { g in [g * mapKernel(x) { $0 > 0 ? 1 : ($0 < 0 ? -1 : 0) }] }
    }
    public func pow(_ p: Float) -> Tensor {
        let x = self
        return mapKernel(x) { Foundation.pow($0, p) }.recorded("pow", [x]) { g in [g * mapKernel(x) { p * Foundation.pow($0, p - 1) }] }
    }
    /// torch.clamp; the gradient passes where min <= x <= max.
    public func clamped(min lo: Float = -.infinity, max hi: Float = .infinity) -> Tensor {
        let x = self
        return mapKernel(x) { Swift.min(Swift.max($0, lo), hi) }.recorded("clamp", [x]) { g in
            [g * mapKernel(x) { $0 >= lo && $0 <= hi ? 1 : 0 }]
        }
    }
}

extension Tensor {
    /// self += other in self's storage, returning self: inference on a tensor the caller owns exclusively (a fresh
    /// output), to spare the buffer a `+` would allocate. `other` broadcasts only if it has self's shape.
    @discardableResult
    public func accumulate(_ other: Tensor) -> Tensor {
        precondition(dtype == .float32 && isContiguous && other.shape == shape && !GradMode.shouldRecord([self, other]),
                     "accumulate: needs contiguous float32 tensors of one shape outside autograd (\(shape), \(other.shape))")
        return OpTimes.measure("elementwise (accumulate)") {
            let o = other.float32().contiguous()
            let d = data, s = o.data
            withExtendedLifetime(o) { Parallel.forRange(count, costPerItem: 1) { r in for i in r { d[i] += s[i] } } }
            return self
        }
    }
}
