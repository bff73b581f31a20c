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
