// Mutation fuzzer for the readers: random byte flips, overwrites with boundary integers,
// truncation and splices of the committed fixtures, each opened in memory and fully read.
// Any thrown CheckpointError is fine; a crash or a non-CheckpointError is a bug.
import Checkpoints
import CompVis
import Foundation

enum Fuzz {
    struct Result {
        var iterations = 0
        var opened = 0
        var rejected = 0
        var otherErrors: [String] = []
    }

    /// SplitMix64: deterministic across platforms.
    struct RNG {
        var s: UInt64
        mutating func next() -> UInt64 {
            s &+= 0x9E37_79B9_7F4A_7C15
            var z = s
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        mutating func below(_ n: Int) -> Int { n <= 1 ? 0 : Int(next() % UInt64(n)) }
    }

    static func mutate(_ input: Data, rng: inout UInt64) -> Data {
        var r = RNG(s: rng)
        defer { rng = r.s }
        var d = [UInt8](input)
        let rounds = 1 + r.below(4)
        for _ in 0..<rounds {
            guard !d.isEmpty else {
                d = [0x50, 0x4B]
                continue
            }
            switch r.below(6) {
            case 0: d[r.below(d.count)] ^= UInt8(1 << r.below(8))
            case 1: d[r.below(d.count)] = UInt8(truncatingIfNeeded: r.next())
            case 2:   // boundary integer at a random offset
                let vals: [UInt64] = [0, 1, 0x7F, 0xFF, 0xFFFF, 0xFFFF_FFFF, 0x7FFF_FFFF, UInt64.max, 1 << 31, 1 << 40]
                var v = vals[r.below(vals.count)]
                let w = [1, 2, 4, 8][r.below(4)]
                let at = r.below(d.count)
                for i in 0..<w where at + i < d.count {
                    d[at + i] = UInt8(truncatingIfNeeded: v)
                    v >>= 8
                }
            case 3: d.removeLast(r.below(d.count))
            case 4:   // duplicate a chunk
                let a = r.below(d.count), n = min(r.below(64) + 1, d.count - a)
                d.insert(contentsOf: d[a..<(a + n)], at: r.below(d.count))
            default:
                let a = r.below(d.count), n = min(r.below(16) + 1, d.count - a)
                d.removeSubrange(a..<(a + n))
            }
        }
        return Data(d)
    }

    /// Opens one input and reads every (small) tensor; returns true when it opened.
    @discardableResult
    static func exercise(_ data: Data) throws -> Bool {
        let f = try CheckpointFile.open(data: data)
        for r in f.tensors.values where r.elementCount <= 1 << 16 && r.dtype.isConvertibleToFloat { _ = try r.floats() }
        _ = ModelFamily.detect(f.tensors)
        _ = CheckpointReport.make(f, title: "fuzz", maxTensors: 10)
        return true
    }

    /// Runs `iterations` mutations of `seeds` (round robin) starting from `seed`.
    static func run(iterations: Int, seed: UInt64, seeds: [Data]) -> Result {
        var res = Result()
        guard !seeds.isEmpty else { return res }
        var rng = seed
        for i in 0..<iterations {
            let input = mutate(seeds[i % seeds.count], rng: &rng)
            res.iterations += 1
            do {
                try exercise(input)
                res.opened += 1
            }
            catch is CheckpointError { res.rejected += 1 }
            catch { res.otherErrors.append("iteration \(i): \(error)") }
        }
        return res
    }
}
