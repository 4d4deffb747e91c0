// `ldm txt2img --timings`: where one generation's time and memory went, split as stable-diffusion.cpp reports it
// (model load, text encoding, sampling per step, VAE decode) plus the process's peak resident set.
import Foundation
#if canImport(Glibc)
import Glibc
#endif

final class Timings {
    private let start = Date()
    private var loaded: Date?
    private var stepEnds: [Date] = []

    func markLoaded() { loaded = Date() }
    /// Called as each denoising step ends (from the progress callback).
    func stepDone() { stepEnds.append(Date()) }

    /// Peak resident set size of this process in bytes (getrusage: ru_maxrss is in KiB on Linux).
    static var peakRSS: Int {
        var u = rusage()
        getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &u)
        return Int(u.ru_maxrss) * 1024
    }

    /// One line: load, text encoding (and initial latents), steps (seconds per step; the first step's time is taken as
    /// the mean of the others when there are several), decode (and image conversion), output, peak RSS.
    func report(decodedAt done: Date, writtenAt written: Date) -> String {
        let loadEnd = loaded ?? start
        var parts = [String(format: "load %.2f s", loadEnd.timeIntervalSince(start))]
        if let first = stepEnds.first, let last = stepEnds.last {
            let n = stepEnds.count
            let perStep = n > 1 ? last.timeIntervalSince(first) / Double(n - 1) : first.timeIntervalSince(loadEnd)
            let text = max(0, first.timeIntervalSince(loadEnd) - perStep)
            parts.append(String(format: "text encoding %.2f s", text))
            parts.append(String(format: "%d steps %.3f s/step (%.2f s)", n, perStep, perStep * Double(n)))
            parts.append(String(format: "decode %.2f s", done.timeIntervalSince(last)))
        } else {
            parts.append(String(format: "generation %.2f s", done.timeIntervalSince(loadEnd)))
        }
        parts.append(String(format: "write %.2f s", written.timeIntervalSince(done)))
        parts.append(String(format: "total %.2f s", written.timeIntervalSince(start)))
        parts.append("peak RSS \(Self.peakRSS >> 20) MB")
        return "timings: " + parts.joined(separator: ", ")
    }
}
