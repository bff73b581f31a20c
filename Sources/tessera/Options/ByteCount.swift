import ArgumentParser
import Foundation

/// A byte count written as `65536`, `64K`, `4M`, `1G` (powers of 1024).
struct ByteCount: ExpressibleByArgument, Sendable, CustomStringConvertible {
    var bytes: UInt64

    init(bytes: UInt64) { self.bytes = bytes }

    init?(argument: String) {
        let s = argument.uppercased().replacingOccurrences(of: "IB", with: "").replacingOccurrences(of: "B", with: "")
        guard let last = s.last else { return nil }
        let shifts: [Character: UInt64] = ["K": 10, "M": 20, "G": 30, "T": 40]
        if let shift = shifts[last] {
            guard let n = UInt64(s.dropLast()), n <= (UInt64.max >> shift) else { return nil }
            bytes = n << shift
        } else {
            guard let n = UInt64(s) else { return nil }
            bytes = n
        }
    }

    var description: String {
        for (unit, shift) in [("T", 40), ("G", 30), ("M", 20), ("K", 10)] where bytes >= (1 << shift) && bytes % (1 << shift) == 0 {
            return "\(bytes >> shift)\(unit)"
        }
        return "\(bytes)"
    }
}
