import Foundation
import TestSupport

/// `count` seeded writes of 4 KiB × 1…`maxPages`, 4 KiB aligned, each filling its range with
/// one non-zero byte value (what `qemu-io write -P` does).
func randomWrites(_ count: Int, maxPages: Int, diskSize: Int, rng: inout SeededGenerator) -> [(offset: Int, length: Int, value: UInt8)] {
    (0..<count).map { _ in
        let length = Int.random(in: 1...maxPages, using: &rng) * 4096
        let offset = Int.random(in: 0..<((diskSize - length) / 4096), using: &rng) * 4096
        return (offset, length, UInt8.random(in: 1...255, using: &rng))
    }
}
