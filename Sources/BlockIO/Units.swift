import Foundation

/// Sizes as people read them, the same in every report and message.
public enum Units {
    /// 1536 -> "1.5 KiB".
    public static func bytes(_ n: UInt64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
        var v = Double(n), i = 0
        while v >= 1024 && i < units.count - 1 { v /= 1024; i += 1 }
        return i == 0 ? "\(n) B" : String(format: "%.1f ", v) + units[i]
    }
}
