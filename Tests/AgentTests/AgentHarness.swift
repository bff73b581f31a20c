import BlockIO
import Foundation
import Testing
import TestSupport

/// An in-memory copy of a disk, updated alongside every write the test makes: the oracle.
struct DiskModel {
    var bytes: [UInt8]
    var blockSize: Int = 65536

    init(size: Int) { bytes = [UInt8](repeating: 0, count: size) }
    init(file: String) throws { bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: file))) }

    mutating func fill(offset: Int, length: Int, with value: UInt8) {
        for i in offset..<(offset + length) { bytes[i] = value }
    }

    /// The 64 KiB blocks a set of writes touches (the tracker's and the chunk grid).
    static func blocks(of writes: [(Int, Int)], blockSize: Int = 65536) -> Set<Int> {
        var out = Set<Int>()
        for (offset, length) in writes where length > 0 {
            for b in (offset / blockSize)...((offset + length - 1) / blockSize) { out.insert(b) }
        }
        return out
    }
}

extension DiskModel {
    /// A sparse raw disk of `size` bytes with seeded random data at `dataOffset`, and its model.
    static func create(at path: String, size: Int, data: Int, at dataOffset: Int, rng: inout SeededGenerator) throws -> DiskModel {
        let disk = try BlockFile(path: path, mode: .createReadWrite)
        try disk.truncate(to: UInt64(size))
        try disk.write(rng.bytes(data), at: UInt64(dataOffset))
        return try DiskModel(file: path)
    }
}

/// `count` seeded writes of 4 KiB × 1…`maxPages`, 4 KiB aligned, each filling its range with
/// one non-zero byte value (what `qemu-io write -P` does).
func randomWrites(_ count: Int, maxPages: Int, diskSize: Int, rng: inout SeededGenerator) -> [(offset: Int, length: Int, value: UInt8)] {
    (0..<count).map { _ in
        let length = Int.random(in: 1...maxPages, using: &rng) * 4096
        let offset = Int.random(in: 0..<((diskSize - length) / 4096), using: &rng) * 4096
        return (offset, length, UInt8.random(in: 1...255, using: &rng))
    }
}
