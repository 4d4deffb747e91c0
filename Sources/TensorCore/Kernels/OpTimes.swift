import Foundation

/// Wall time per op kind, for finding where a model's time goes (`LDM_OP_TIMES=1`; `ldm bench part` prints the table
/// on stderr). Only the outermost timed op of a nest is counted (an op's own inner ops are part of its time). Off, it
/// costs one branch per op.
public enum OpTimes {
    public static let enabled = ProcessInfo.processInfo.environment["LDM_OP_TIMES"] == "1"
    nonisolated(unsafe) private static var totals: [String: (seconds: Double, calls: Int)] = [:]
    nonisolated(unsafe) private static var depth = 0

    /// Runs `body`, adding its wall time to `name` when timing is on and no timed op encloses this one.
    @inline(__always)
    public static func measure<T>(_ name: @autoclosure () -> String, _ body: () throws -> T) rethrows -> T {
        guard enabled, Thread.isMainThread else { return try body() }
        depth += 1
        let t0 = DispatchTime.now().uptimeNanoseconds
        defer {
            depth -= 1
            if depth == 0 {
                let dt = Double(DispatchTime.now().uptimeNanoseconds - t0) * 1e-9
                let key = name()
                totals[key, default: (0, 0)].seconds += dt
                totals[key, default: (0, 0)].calls += 1
            }
        }
        return try body()
    }

    public static func reset() { totals = [:] }

    /// The table, largest first, per run when the totals cover `runs` runs.
    public static func report(runs: Int = 1) -> String {
        let all = totals.values.reduce(0) { $0 + $1.seconds }
        var s = String(format: "op times per run (timed ops: %.3f s)\n", all / Double(runs))
        for (k, v) in totals.sorted(by: { $0.value.seconds > $1.value.seconds }) {
            s += String(format: "%9.3f s %6d calls  ", v.seconds / Double(runs), v.calls / runs) + k + "\n"
        }
        return s
    }
}
