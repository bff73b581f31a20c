import BlockIO
import Filter
import Foundation
import Testing
import TestSupport
import TrackerControl

/// Promise 2: the dirty bitmaps the filter exports and the changes it answers equal the
/// blocks of the test's own write log (64 KiB rounding, nothing more, nothing less).
@Suite(.serialized)
struct TrackingOracleTests {
    static let size: UInt64 = 16 << 20

    /// One round of seeded writes, write-zeroes and trims through qemu-io; returns its log.
    static func round(_ uri: String, _ rng: inout SeededGenerator, model: inout DiskModel, writes: Int = 24) throws -> [ByteRange] {
        let start = model.log.count
        let size = model.size
        var commands = InteropTests.patternWrites(&rng, count: writes, model: &model)
        for _ in 0..<3 {
            let length = UInt64.random(in: 1...(300 << 10), using: &rng)
            let offset = UInt64.random(in: 0...(size - length), using: &rng)
            if Bool.random(using: &rng) {
                commands.append("write -z \(offset) \(length)")
            } else {
                commands.append("discard \(offset) \(length)")
            }
            model.zero(at: offset, length: length)
        }
        try InteropTests.qemuIO(uri, commands)
        return Array(model.log[start...])
    }

    @Test(.enabled(if: ExternalTool.available("qemu-io", "nbdinfo")))
    func dirtyBitmapsAndChangesEqualTheWriteLog() throws {
        let dir = try TemporaryDirectory("filter-oracle")
        let diskPath = dir.file("disk.raw")
        var model = try DiskModel.create(at: diskPath, size: Self.size, seed: 5)
        let filter = FilterProcess(directory: dir, diskPath: diskPath)
        var rng = SeededGenerator(seed: 77)
        try withFilter(filter) { f in
            let g = try f.status().granularity
            #expect(g == 65536)
            let c0 = try f.status().changeID

            // Round 0, before any checkpoint.
            let log0 = try Self.round(f.uri, &rng, model: &model)
            let blocks0 = DiskModel.blocks(of: log0, granularity: g)
            let active0 = try nbdinfoMapBlocks(uri: f.uri, context: "qemu:dirty-bitmap:active")
            #expect(active0 == blocks0, "active bitmap \(describe(active0)) != written blocks \(describe(blocks0))")
            let since0 = DiskModel.blocks(of: try f.changes(since: c0), granularity: g)
            #expect(since0 == blocks0, "changes --since \(c0): \(describe(since0)) != \(describe(blocks0))")

            // A committed checkpoint gives the next checkpoint view a lower bound.
            let c1 = try f.client().checkpoint(disk: "d0").changeID
            _ = try f.client().release(disk: "d0", commit: true)

            let log1 = try Self.round(f.uri, &rng, model: &model)
            let blocks1 = DiskModel.blocks(of: log1, granularity: g)
            let active1 = try nbdinfoMapBlocks(uri: f.uri, context: "qemu:dirty-bitmap:active")
            #expect(active1 == blocks1, "active after C1: \(describe(active1)) != \(describe(blocks1))")

            let c2 = try f.client().checkpoint(disk: "d0").changeID
            let log2 = try Self.round(f.uri, &rng, model: &model)
            let blocks2 = DiskModel.blocks(of: log2, granularity: g)
            let frozen = try nbdinfoMapBlocks(uri: f.checkpointURI, context: "qemu:dirty-bitmap:checkpoint")
            #expect(frozen == blocks1, "checkpoint bitmap on d0@checkpoint: \(describe(frozen)) != round 1 \(describe(blocks1))")
            let active2 = try nbdinfoMapBlocks(uri: f.uri, context: "qemu:dirty-bitmap:active")
            #expect(active2 == blocks2, "active with C2 open: \(describe(active2)) != round 2 \(describe(blocks2))")

            let sinceC1 = DiskModel.blocks(of: try f.changes(since: c1), granularity: g)
            #expect(sinceC1 == blocks1.union(blocks2), "changes --since C1: \(describe(sinceC1))")
            let sinceC2 = DiskModel.blocks(of: try f.changes(since: c2), granularity: g)
            #expect(sinceC2 == blocks2, "changes --since C2: \(describe(sinceC2)) != \(describe(blocks2))")
            let sinceC0 = DiskModel.blocks(of: try f.changes(since: c0), granularity: g)
            #expect(sinceC0 == blocks0.union(blocks1).union(blocks2), "changes --since C0: \(describe(sinceC0))")

            _ = try f.client().release(disk: "d0", commit: true)
            let sinceC2After = DiskModel.blocks(of: try f.changes(since: c2), granularity: g)
            #expect(sinceC2After == blocks2, "changes --since C2 after release: \(describe(sinceC2After))")
            f.stop()
        }
        let file = try fileBytes(diskPath)
        expectSame(file, model.bytes, "the flat file differs from the model")
    }

    /// Every written byte lies inside a reported extent (the promise in its plain form).
    static func covers(_ extents: [ControlProtocol.Extent], _ log: [ByteRange]) -> ByteRange? {
        let sorted = extents.map { ByteRange(offset: $0.offset, length: $0.length) }.sorted { $0.offset < $1.offset }
        for w in log where w.length > 0 {
            var at = w.offset
            for e in sorted where e.offset <= at && e.end > at {
                at = e.end
                if at >= w.end { break }
            }
            if at < w.end { return w }
        }
        return nil
    }
}
