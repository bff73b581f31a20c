import Agent
import Foundation
import Synchronization

/// A one-line progress bar on stderr when it is a terminal (bytes, rate, ETA); silent
/// otherwise. With `--json`, progress goes to stdout as JSON lines instead.
final class ProgressBar: Sendable {
    private let enabled: Bool
    private let json: Bool
    private let label: String
    private let lastJSON = Mutex<Double>(-1)

    init(label: String, json: Bool) {
        self.label = label
        self.json = json
        self.enabled = isatty(STDERR_FILENO) != 0
    }

    struct Line: Codable {
        var type = "progress"
        var bytesDone: UInt64, bytesTotal: UInt64, seconds: Double
        enum CodingKeys: String, CodingKey { case type, seconds, bytesDone = "bytes_done", bytesTotal = "bytes_total" }
    }

    func update(_ p: BackupProgress) {
        if json {
            // The first line as soon as work shows, then one a second.
            let due = lastJSON.withLock { last -> Bool in
                if last >= 0 && p.seconds - last < 1 { return false }
                if last < 0 && p.bytesDone == 0 { return false }
                last = p.seconds
                return true
            }
            if due { Output.json(Line(bytesDone: p.bytesDone, bytesTotal: p.bytesPlanned, seconds: p.seconds)) }
            return
        }
        guard enabled else { return }
        let fraction = p.bytesPlanned == 0 ? 1 : min(1, Double(p.bytesDone) / Double(p.bytesPlanned))
        let rate = p.seconds > 0 ? Double(p.bytesDone) / p.seconds : 0
        let eta = rate > 0 ? Double(p.bytesPlanned - min(p.bytesDone, p.bytesPlanned)) / rate : 0
        let width = 30
        let filled = Int(fraction * Double(width))
        let bar = String(repeating: "#", count: filled) + String(repeating: "-", count: width - filled)
        // ESC[K clears what a longer earlier line left on the right.
        let line = String(format: "\r%@ [%@] %3.0f%% %@ / %@  %@/s  ETA %@\u{1B}[K", label, bar, fraction * 100,
                          Output.bytes(p.bytesDone), Output.bytes(p.bytesPlanned), Output.bytes(UInt64(rate)),
                          Output.duration(eta))
        FileHandle.standardError.write(Data(line.utf8))
    }

    func finish() {
        if enabled && !json { FileHandle.standardError.write(Data("\r\u{1B}[K".utf8)) }
    }
}
