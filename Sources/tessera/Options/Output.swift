import BlockIO
import Foundation

/// Printing for humans and for scripts (`--json`: one JSON object per line).
enum Output {
    static func json(_ value: some Encodable) {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        if let data = try? encoder.encode(value), let line = String(data: data, encoding: .utf8) {
            print(line)
            // A pipe would buffer the line until exit: whoever reads --json (a scheduler, a
            // progress display) gets each line when it happens.
            fflush(nil)
        }
    }

    /// `tessera: error: MESSAGE` on stderr: the one way an error is printed.
    static func error(_ message: String) {
        FileHandle.standardError.write(Data("tessera: error: \(message)\n".utf8))
    }

    /// `tessera: MESSAGE` on stderr: what the operator should know that is not an error
    /// (a checkpoint released, chunks healed, a staging folder removed).
    static func note(_ message: String) {
        FileHandle.standardError.write(Data("tessera: \(message)\n".utf8))
    }

    /// "1 snapshot", "2 snapshots"; `plural` for irregular words ("chunk copies").
    static func count(_ n: Int, _ singular: String, _ plural: String? = nil) -> String {
        "\(n) \(n == 1 ? singular : plural ?? singular + "s")"
    }

    /// 1536 -> "1.5 KiB".
    static func bytes(_ n: UInt64) -> String { Units.bytes(n) }

    static func duration(_ seconds: Double) -> String {
        if seconds < 120 { return String(format: "%.0fs", seconds) }
        if seconds < 7200 { return String(format: "%.0fm", seconds / 60) }
        return String(format: "%.1fh", seconds / 3600)
    }
}
