import BlockIO
import ChangeTracking
import Filter
import TrackerControl
import Testing
import TestSupport

/// The page-cache fast path of the filter's reads (`FilteredDisk.readIfCached`, used by the
/// NBD server on its event loop) returns exactly what the ordinary read returns: base bytes,
/// overlay blocks and zeroed blocks while a checkpoint is open, and the frozen base for the
/// checkpoint view.
struct CachedReadTests {
    static let size: UInt64 = 4 << 20

    /// Reads `[offset, +length)` both ways; the blocking read first, so the data is cached
    /// and the fast path must answer.
    private func compare(_ disk: FilteredDisk, _ offset: UInt64, _ length: Int, checkpointView: Bool = false,
                         _ model: [UInt8], _ label: String) throws {
        var slow = [UInt8](repeating: 0xEE, count: length)
        var fast = [UInt8](repeating: 0xDD, count: length)
        if checkpointView {
            let id = try #require(disk.readableCheckpointID)
            try slow.withUnsafeMutableBytes { try disk.readCheckpoint(id, offset: offset, into: $0) }
            #expect(fast.withUnsafeMutableBytes { disk.readCheckpointIfCached(id, offset: offset, into: $0) }, "\(label): not served")
        } else {
            try slow.withUnsafeMutableBytes { try disk.read(offset: offset, into: $0) }
            #expect(fast.withUnsafeMutableBytes { disk.readIfCached(offset: offset, into: $0) }, "\(label): not served")
        }
        #expect(slow == Array(model[Int(offset)..<Int(offset) + length]), "\(label): read differs from the model")
        #expect(fast == slow, "\(label): readIfCached differs from read at [\(offset), +\(length))")
    }

    @Test func fastReadsMatchOrdinaryReadsWithAndWithoutACheckpoint() throws {
        let dir = try TemporaryDirectory("filter-cached-read")
        let path = dir.file("disk.raw")
        var model = try DiskModel.create(at: path, size: Self.size, seed: 41)
        let disk = try FilteredDisk.attach(name: "d0", path: path, stateDirectory: dir.file("state"),
                                           configuration: TrackerConfiguration())
        defer { try? disk.close() }
        var rng = SeededGenerator(seed: 42)
        func randomRange() -> (UInt64, Int) {
            let length = [1, 512, 4096, 65536, 70000, 131072][Int.random(in: 0..<6, using: &rng)]
            return (UInt64.random(in: 0...(Self.size - UInt64(length)), using: &rng), length)
        }
        for i in 0..<100 {
            let (offset, length) = randomRange()
            try compare(disk, offset, length, model.bytes, "no checkpoint #\(i)")
        }
        // Past the end is refused, never served.
        var tail = [UInt8](repeating: 0, count: 8192)
        #expect(!tail.withUnsafeMutableBytes { disk.readIfCached(offset: Self.size - 4096, into: $0) })

        _ = try disk.checkpoint()
        let frozen = model.bytes
        for _ in 0..<40 {
            let (offset, length) = randomRange()
            if Bool.random(using: &rng) {
                let data = rng.bytes(length)
                try data.withUnsafeBytes { try disk.write(offset: offset, bytes: $0, fua: false) }
                model.write(data, at: offset)
            } else {
                // Whole 64 KiB blocks become overlay zero entries; partial ones copy-on-write.
                try disk.zero(ByteRange(offset: offset, length: UInt64(length)), noHole: false, fua: false)
                model.zero(at: offset, length: UInt64(length))
            }
        }
        for i in 0..<150 {
            let (offset, length) = randomRange()
            try compare(disk, offset, length, model.bytes, "checkpoint open #\(i)")
            try compare(disk, offset, length, checkpointView: true, frozen, "checkpoint view #\(i)")
        }
        let id = try #require(disk.readableCheckpointID)
        try disk.release(commit: true)
        for i in 0..<50 {
            let (offset, length) = randomRange()
            try compare(disk, offset, length, model.bytes, "after release #\(i)")
        }
        #expect(!tail.withUnsafeMutableBytes { disk.readCheckpointIfCached(id, offset: 0, into: $0) },
                "the checkpoint view is gone after release")
    }
}
