import Foundation
import CKernels

// Elementwise kernels over float32: contiguous fast paths (auto-vectorised) and a strided broadcasting path.

@inline(__always)
func mapKernel(_ x: Tensor, _ f: (Float) -> Float) -> Tensor { OpTimes.measure("elementwise (map)") { mapKernelOp(x, f) } }

@inline(__always)
func mapKernelOp(_ x: Tensor, _ f: (Float) -> Float) -> Tensor {
    let src = x.float32().contiguous()
    defer { withExtendedLifetime(src) {} }
    let out = Tensor.empty(x.shape)
    let s = src.data, d = out.data
    Parallel.forRange(out.count, costPerItem: 4) { r in for i in r { d[i] = f(s[i]) } }
    return out
}

@inline(__always)
func zipKernel(_ a: Tensor, _ b: Tensor, _ f: (Float, Float) -> Float) -> Tensor {
    OpTimes.measure("elementwise (zip\(a.shape == b.shape && a.isContiguous && b.isContiguous ? "" : ", strided/broadcast"))") { zipKernelOp(a, b, f) }
}

@inline(__always)
func zipKernelOp(_ a: Tensor, _ b: Tensor, _ f: (Float, Float) -> Float) -> Tensor {
    let a = a.float32(), b = b.float32()
    defer { withExtendedLifetime((a, b)) {} }
    let shape = a.shape == b.shape ? a.shape : broadcastShape(a.shape, b.shape)
    let out = Tensor.empty(shape)
    let d = out.data, n = out.count
    if a.shape == shape && b.shape == shape && a.isContiguous && b.isContiguous {
        let x = a.data, y = b.data
        Parallel.forRange(n, costPerItem: 2) { r in for i in r { d[i] = f(x[i], y[i]) } }
        return out
    }
    if b.count == 1 && a.shape == shape && a.isContiguous {
        let x = a.data, y = b.data.pointee
        Parallel.forRange(n, costPerItem: 2) { r in for i in r { d[i] = f(x[i], y) } }
        return out
    }
    if a.count == 1 && b.shape == shape && b.isContiguous {
        let x = a.data.pointee, y = b.data
        Parallel.forRange(n, costPerItem: 2) { r in for i in r { d[i] = f(x, y[i]) } }
        return out
    }
    let av = a.broadcasted(to: shape, recording: false), bv = b.broadcasted(to: shape, recording: false)
    let x = av.data, y = bv.data
    let rank = shape.count
    let inner = rank == 0 ? 1 : shape[rank - 1]
    let sa = rank == 0 ? 0 : av.strides[rank - 1], sb = rank == 0 ? 0 : bv.strides[rank - 1]
    if rank <= 1 {
        for i in 0..<inner { d[i] = f(x[i * sa], y[i * sb]) }
        return out
    }
    // Parallel over the first axis; rows of the last axis inside.
    let innerShape = Array(shape.dropFirst()), oS = Array(out.strides.dropFirst())
    let aS = Array(av.strides.dropFirst()), bS = Array(bv.strides.dropFirst())
    Parallel.forEach(shape[0], costPerItem: innerShape.reduce(1, *)) { i0 in
        let dp0 = d + i0 * out.strides[0], xp0 = x + i0 * av.strides[0], yp0 = y + i0 * bv.strides[0]
        forEachRow3(shape: innerShape, oS, aS, bS) { o, p, q in
            let dp = dp0 + o, xp = xp0 + p, yp = yp0 + q
            if sa == 1 && sb == 1 { for i in 0..<inner { dp[i] = f(xp[i], yp[i]) } }
            else if sa == 1 && sb == 0 {
                let c = yp.pointee
                for i in 0..<inner { dp[i] = f(xp[i], c) }
            }
            else if sa == 0 && sb == 1 {
                let c = xp.pointee
                for i in 0..<inner { dp[i] = f(c, yp[i]) }
            }
            else { for i in 0..<inner { dp[i] = f(xp[i * sa], yp[i * sb]) } }
        }
    }
    return out
}

/// Like `forEachRow` for three layouts sharing one shape.
@inline(__always)
func forEachRow3(shape: [Int], _ s0: [Int], _ s1: [Int], _ s2: [Int], _ body: (Int, Int, Int) -> Void) {
    let rank = shape.count
    if rank <= 1 {
        body(0, 0, 0)
        return
    }
    var idx = [Int](repeating: 0, count: rank - 1)
    var a = 0, b = 0, c = 0
    for _ in 0..<shape[0..<(rank - 1)].reduce(1, *) {
        body(a, b, c)
        var k = rank - 2
        while k >= 0 {
            idx[k] += 1
            a += s0[k]
            b += s1[k]
            c += s2[k]
            if idx[k] < shape[k] { break }
            a -= s0[k] * shape[k]
            b -= s1[k] * shape[k]
            c -= s2[k] * shape[k]
            idx[k] = 0
            k -= 1
        }
    }
}

/// An activation through the C kernels (full SIMD width of the CPU): y = f(x).
func activationKernel(_ x: Tensor, _ op: ck_activation) -> Tensor {
    let src = x.float32().contiguous()
    defer { withExtendedLifetime(src) {} }
    let out = Tensor.empty(x.shape)
    let s = src.data, d = out.data
    Parallel.forRange(out.count, costPerItem: 8) { r in ck_activation_forward(op, s + r.lowerBound, d + r.lowerBound, r.count) }
    return out
}

/// dx = g * f'(x) through the C kernels.
func activationBackwardKernel(_ g: Tensor, _ x: Tensor, _ op: ck_activation) -> Tensor {
    let gc = g.float32().contiguous(), xc = x.float32().contiguous()
    defer { withExtendedLifetime((gc, xc)) {} }
    precondition(gc.shape == xc.shape, "activation backward: gradient \(gc.shape) vs input \(xc.shape)")
    let out = Tensor.empty(x.shape)
    let gp = gc.data, xp = xc.data, d = out.data
    Parallel.forRange(out.count, costPerItem: 10) { r in
        ck_activation_backward(op, gp + r.lowerBound, xp + r.lowerBound, d + r.lowerBound, r.count)
    }
    return out
}
