// Reverse-mode autograd in the manner of torch.autograd: an op whose inputs require gradients records a GradNode
// (its inputs and a backward closure) on its output; `backward()` walks the recorded graph in reverse topological
// order. Under `GradMode.noGrad` nothing is recorded, so inference allocates nothing for autograd.
// Two extension points: `GradientReadyHooks` (torch.Tensor.register_post_accumulate_grad_hook: a leaf's `.grad` is
// final during `backward()`, which data-parallel training uses to start a gradient bucket's all-reduce while backward
// goes on), and `Tensor.recordingBackward` (torch.autograd.Function: an op computed outside autograd with its own
// backward, e.g. SyncBatchNorm, whose backward itself communicates).

public final class GradNode {
    public let name: String
    let inputs: [Tensor]
    let backward: (Tensor) -> [Tensor?]
    init(name: String, inputs: [Tensor], backward: @escaping (Tensor) -> [Tensor?]) {
        self.name = name
        self.inputs = inputs
        self.backward = backward
    }
}

public enum GradMode {
    /// Global switch (the training loop and inference each run on one driver thread; kernels never touch it).
    public nonisolated(unsafe) static var isEnabled = true

    public static func noGrad<T>(_ body: () throws -> T) rethrows -> T {
        let saved = isEnabled
        isEnabled = false
        defer { isEnabled = saved }
        return try body()
    }
    public static func withGrad<T>(_ body: () throws -> T) rethrows -> T {
        let saved = isEnabled
        isEnabled = true
        defer { isEnabled = saved }
        return try body()
    }
    @inline(__always) static func shouldRecord(_ inputs: Tensor...) -> Bool {
        guard isEnabled else { return false }
        for t in inputs where t.requiresGrad { return true }
        return false
    }
    /// Whether an op on `inputs` records its gradient now (grad mode on and some input requires one).
    @inline(__always) public static func shouldRecord(_ inputs: [Tensor]) -> Bool {
        guard isEnabled else { return false }
        for t in inputs where t.requiresGrad { return true }
        return false
    }
}

/// torch.Tensor.register_post_accumulate_grad_hook, scoped: while `withHooks` runs, `backward()` calls `hook(leaf)`
/// for each of `leaves` right after accumulating its `.grad`. In reverse topological order a leaf comes after every
/// node that reaches it, so at that point its `.grad` is final for this backward pass (summed with what was there
/// before, as with gradient accumulation). A leaf the pass does not reach gets no call. `gradients(wrt:)` leaves
/// `.grad` alone and calls no hook. Runs on the thread that calls backward().
public enum GradientReadyHooks {
    nonisolated(unsafe) static var active: [ObjectIdentifier: (Tensor) -> Void] = [:]

    public static func withHooks<T>(on leaves: [Tensor], _ hook: @escaping (Tensor) -> Void, _ body: () throws -> T) rethrows -> T {
        let saved = active
        for t in leaves { active[ObjectIdentifier(t)] = hook }
        defer { active = saved }
        // The leaves stay alive (so their identifiers stay theirs) until the hooks are gone.
        return try withExtendedLifetime(leaves) { try body() }
    }
}

extension Tensor {
    /// torch.autograd.Function: `self` (an op's fresh output, computed without recording) gets `backward` as its
    /// gradient function when an input requires gradients and grad mode is on. `backward` receives d(loss)/d(self)
    /// and returns one gradient (or nil) per input, each of that input's shape.
    @discardableResult
    public func recordingBackward(_ name: String, inputs: [Tensor], _ backward: @escaping (Tensor) -> [Tensor?]) -> Tensor {
        recorded(name, inputs, backward)
    }

    /// Attaches a backward function to `self` (an op's fresh output) when any input requires gradients.
    @discardableResult
    func recorded(_ name: String, _ inputs: [Tensor], _ backward: @escaping (Tensor) -> [Tensor?]) -> Tensor {
        guard GradMode.shouldRecord(inputs) else { return self }
        requiresGrad = true
        gradFn = GradNode(name: name, inputs: inputs, backward: backward)
        return self
    }

    /// A view of the same values cut off from the graph (torch.Tensor.detach).
    public func detach() -> Tensor {
        Tensor(storage: storage, shape: shape, strides: strides, offset: offset, dtype: dtype)
    }

    /// Accumulates d(self)/d(leaf) into every leaf's `.grad` (summing with what is there, as PyTorch does).
    /// `self` must be a scalar unless `gradient` is given. The graph is freed afterwards.
    public func backward(_ gradient: Tensor? = nil) {
        precondition(requiresGrad, "backward: tensor does not require grad")
        let seed = gradient ?? Tensor.ones(shape)
        precondition(seed.shape == shape, "backward: gradient shape \(seed.shape) != \(shape)")
        // Topological order by iterative DFS over grad_fn edges.
        var order: [Tensor] = []
        var visited = Set<ObjectIdentifier>()
        var stack: [(Tensor, Bool)] = [(self, false)]
        while let (t, expanded) = stack.popLast() {
            if expanded {
                order.append(t)
                continue
            }
            guard visited.insert(ObjectIdentifier(t)).inserted else { continue }
            stack.append((t, true))
            for input in t.gradFn?.inputs ?? [] where input.requiresGrad && !visited.contains(ObjectIdentifier(input)) {
                stack.append((input, false))
            }
        }
        var grads: [ObjectIdentifier: Tensor] = [ObjectIdentifier(self): seed]
        GradMode.noGrad {
            for t in order.reversed() {
                guard let g = grads.removeValue(forKey: ObjectIdentifier(t)) else { continue }
                guard let node = t.gradFn else {
                    let g32 = g.shape == t.shape ? g : g.reshaped(t.shape)
                    t.grad = t.grad.map { $0 + g32 } ?? g32.contiguous()
                    if !GradientReadyHooks.active.isEmpty, let hook = GradientReadyHooks.active[ObjectIdentifier(t)] { hook(t) }
                    continue
                }
                let inputGrads = node.backward(g)
                for (input, ig) in zip(node.inputs, inputGrads) where input.requiresGrad {
                    guard let ig else { continue }
                    precondition(ig.shape == input.shape, "\(node.name) backward: grad shape \(ig.shape) != input \(input.shape)")
                    let key = ObjectIdentifier(input)
                    grads[key] = grads[key].map { $0 + ig } ?? ig
                }
                t.gradFn = nil
            }
        }
    }

    /// d(self)/d(t) for each tensor of `wrt`, as torch.autograd.grad(self, wrt, retain_graph=...): `.grad` is not
    /// touched, only the part of the graph between `self` and `wrt` is walked, and the graph is kept when
    /// `retainGraph` (so a later `backward()` or another `gradients` call still works); otherwise it is freed as
    /// `backward()` frees it. A tensor of `wrt` that `self` does not depend on gets zeros (torch would raise unless
    /// allow_unused; zeros are what calculate_adaptive_weight-style callers want). `self` must be a scalar unless
    /// `gradient` is given.
    public func gradients(wrt targets: [Tensor], gradient: Tensor? = nil, retainGraph: Bool = false) -> [Tensor] {
        precondition(requiresGrad, "gradients: tensor does not require grad")
        let seed = gradient ?? Tensor.ones(shape)
        precondition(seed.shape == shape, "gradients: gradient shape \(seed.shape) != \(shape)")
        let wanted = Set(targets.map(ObjectIdentifier.init))
        // Post-order DFS; `reaches` marks the nodes from which some target is reachable (only those are walked).
        var order: [Tensor] = []
        var reaches = Set<ObjectIdentifier>()
        var visited = Set<ObjectIdentifier>()
        var stack: [(Tensor, Bool)] = [(self, false)]
        while let (t, expanded) = stack.popLast() {
            let id = ObjectIdentifier(t)
            if expanded {
                if wanted.contains(id) || (t.gradFn?.inputs ?? []).contains(where: { reaches.contains(ObjectIdentifier($0)) }) {
                    reaches.insert(id)
                    order.append(t)
                }
                continue
            }
            guard visited.insert(id).inserted else { continue }
            stack.append((t, true))
            for input in t.gradFn?.inputs ?? [] where input.requiresGrad && !visited.contains(ObjectIdentifier(input)) {
                stack.append((input, false))
            }
        }
        var grads: [ObjectIdentifier: Tensor] = [ObjectIdentifier(self): seed]
        var result: [ObjectIdentifier: Tensor] = [:]
        GradMode.noGrad {
            for t in order.reversed() {
                let id = ObjectIdentifier(t)
                guard let g = grads.removeValue(forKey: id) else { continue }
                if wanted.contains(id) { result[id] = (g.shape == t.shape ? g : g.reshaped(t.shape)).contiguous() }
                guard let node = t.gradFn else { continue }
                let inputGrads = node.backward(g)
                for (input, ig) in zip(node.inputs, inputGrads) where input.requiresGrad {
                    guard let ig, reaches.contains(ObjectIdentifier(input)) else { continue }
                    precondition(ig.shape == input.shape, "\(node.name) backward: grad shape \(ig.shape) != input \(input.shape)")
                    let key = ObjectIdentifier(input)
                    grads[key] = grads[key].map { $0 + ig } ?? ig
                }
                if !retainGraph { t.gradFn = nil }
            }
        }
        return targets.map { result[ObjectIdentifier($0)] ?? Tensor(zeros: $0.shape) }
    }

    /// For each of `leaves`, whether `backward()` from `self` would reach it (a path of recorded ops from `self` to
    /// it). DDP's find_unused_parameters walks the graph the same way before backward.
    public func reaches(_ leaves: [Tensor]) -> [Bool] {
        var visited = Set<ObjectIdentifier>()
        var stack: [Tensor] = requiresGrad ? [self] : []
        while let t = stack.popLast() {
            guard visited.insert(ObjectIdentifier(t)).inserted else { continue }
            for input in t.gradFn?.inputs ?? [] where input.requiresGrad { stack.append(input) }
        }
        return leaves.map { visited.contains(ObjectIdentifier($0)) }
    }

    /// Sets `.grad` to nil (optimizer.zero_grad(set_to_none=True)).
    public func zeroGrad() { grad = nil }
}
