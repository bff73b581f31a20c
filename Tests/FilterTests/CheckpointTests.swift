import BlockIO
import Codecs
import Filter
import Foundation
import Testing
import TestSupport
import TrackerControl

/// Promise 3: during a checkpoint the base flat file stays still, the live export shows the
/// new data and `NAME@checkpoint` the old; release (commit or abort) merges everything back
/// and loses no change.
@Suite(.serialized)
struct CheckpointTests {
    static let size: UInt64 = 16 << 20

    @Test(.enabled(if: ExternalTool.available("qemu-io", "nbdcopy")))
    func baseStaysStillAndReleaseMergesEverything() throws {
        let dir = try TemporaryDirectory("filter-ckpt")
        let diskPath = dir.file("disk.raw")
        var model = try DiskModel.create(at: diskPath, size: Self.size, seed: 31)
        let filter = FilterProcess(directory: dir, diskPath: diskPath)
        var rng = SeededGenerator(seed: 32)
        try withFilter(filter) { f in
            let g = try f.status().granularity
            let c0 = try f.status().changeID
            var allWrites: [ByteRange] = []

            for (round, abort) in [false, true].enumerated() {
                _ = try f.client().checkpoint(disk: "d0")
                let before = model.bytes
                let hashBefore = try fileHash(diskPath)
                // Many writes, write-zeroes and trims, flushed (FLUSH reaches the overlay).
                for _ in 0..<4 {
                    allWrites += try TrackingOracleTests.round(f.uri, &rng, model: &model, writes: 30)
                }
                try InteropTests.qemuIO(f.uri, ["flush"])
                let hashDuring = try fileHash(diskPath)
                #expect(hashDuring == hashBefore, "round \(round): the base file changed while the checkpoint was open")

                let live = dir.file("live.raw"), frozen = dir.file("frozen.raw")
                try? FileManager.default.removeItem(atPath: live)
                try? FileManager.default.removeItem(atPath: frozen)
                try run("nbdcopy", [f.uri, live])
                try run("nbdcopy", [f.checkpointURI, frozen])
                let liveBytes = try fileBytes(live), frozenBytes = try fileBytes(frozen)
                expectSame(liveBytes, model.bytes, "round \(round): live export")
                expectSame(frozenBytes, before, "round \(round): checkpoint export")

                // base:allocation may call a range zero only where it reads as zeroes.
                for (uri, image, name) in [(f.uri, model.bytes, "live"), (f.checkpointURI, before, "checkpoint")] {
                    for r in try nbdinfoMapRanges(uri: uri, context: "base:allocation", type: 2)
                    where image[Int(r.offset)..<Int(r.end)].contains(where: { $0 != 0 }) {
                        Issue.record("round \(round): base:allocation of the \(name) export calls \(r) zero, but it holds data")
                    }
                }
                // What a backup asks while the checkpoint is open: every change since C0, and an
                // extent flagged zero must read as zeroes in the frozen base it will read.
                let open = try f.changes(since: c0)
                if let missed = TrackingOracleTests.covers(open, allWrites) {
                    Issue.record("round \(round): changes --since \(c0) with the checkpoint open miss \(missed)")
                }
                if let bad = Self.zeroExtentWithData(open, frozenBytes) {
                    Issue.record("round \(round): changes --since \(c0) flag \(bad) as zero, but the frozen base has data there")
                }
                let r = try f.cli(["release", "--disk", "d0"] + (abort ? ["--abort"] : []))
                #expect(r.succeeded, "release failed: \(r.stderr)")
                #expect(try f.status().checkpoint == nil)
                let base = try fileBytes(diskPath)
                expectSame(base, model.bytes, "round \(round): base after release")

                // No change is lost, whichever way the checkpoint ended.
                let changes = try f.changes(since: c0)
                if let missed = TrackingOracleTests.covers(changes, allWrites) {
                    Issue.record("round \(round): changes --since \(c0) miss the write \(missed)")
                }
                let blocks = DiskModel.blocks(of: changes, granularity: g)
                #expect(blocks == DiskModel.blocks(of: allWrites, granularity: g), "round \(round): changes --since C0 are not the written blocks")
            }
            f.stop()
        }
        let file = try fileBytes(diskPath)
        expectSame(file, model.bytes, "the flat file after stop")
    }

    /// The first extent flagged `zero` whose bytes in `image` are not all zero.
    static func zeroExtentWithData(_ extents: [ControlProtocol.Extent], _ image: [UInt8]) -> ControlProtocol.Extent? {
        extents.first { e in e.zero && image[Int(e.offset)..<Int(e.offset + e.length)].contains { $0 != 0 } }
    }

    /// A block written before a checkpoint and trimmed after it: a backup of the checkpoint
    /// must read it (the frozen base holds data there), so QUERY_CHANGES may not flag it zero.
    @Test(.enabled(if: ExternalTool.available("qemu-io")))
    func blocksTrimmedAfterTheCheckpointAreNotReportedAsZero() throws {
        let dir = try TemporaryDirectory("filter-zflag")
        let diskPath = dir.file("disk.raw")
        try DiskModel.create(at: diskPath, size: 4 << 20, seed: 33)
        let filter = FilterProcess(directory: dir, diskPath: diskPath)
        try withFilter(filter) { f in
            let c0 = try f.status().changeID
            try InteropTests.qemuIO(f.uri, ["write -P 0x11 131072 65536", "write -P 0x22 262144 100"])
            _ = try f.client().checkpoint(disk: "d0")
            try InteropTests.qemuIO(f.uri, ["discard 131072 65536", "write -z 262144 65536"])
            let frozen = try readExport(f.checkpointURI)
            let changes = try f.changes(since: c0)
            #expect(DiskModel.blocks(of: changes, granularity: 65536) == [2, 4])
            if let bad = Self.zeroExtentWithData(changes, frozen) {
                Issue.record("changes --since \(c0) flag \(bad) as zero, but the frozen base has data there")
            }
            _ = try f.client().release(disk: "d0", commit: true)
            // After the release the live disk is what a later backup reads: zero is right now.
            let after = try f.changes(since: c0)
            #expect(after.allSatisfy { $0.zero }, "after release the trimmed blocks read as zeroes: \(after)")
            f.stop()
        }
    }

    /// Checkpoints taken while a writer keeps writing: every write lands wholly before the
    /// checkpoint (in the frozen base) or wholly after it, so the frozen base equals the disk
    /// after some prefix of the writes, and that prefix holds every write acknowledged
    /// before CHECKPOINT was sent.
    @Test
    func checkpointsDuringWritesAreAtomic() throws {
        let size: UInt64 = 16 << 20
        let dir = try TemporaryDirectory("filter-atomic")
        let diskPath = dir.file("disk.raw")
        let initial = try DiskModel.create(at: diskPath, size: size, seed: 34)
        let filter = FilterProcess(directory: dir, diskPath: diskPath)
        var taken: [(range: ClosedRange<Int>, frozen: Digest128)] = []
        var model = initial
        try withFilter(filter) { f in
            let c0 = try f.status().changeID
            let writer = AckedWriter(uri: f.uri, size: size, seed: 35, maxLength: 200_000)
            for _ in 0..<3 {
                // The point: the writer keeps writing between, before and during checkpoints.
                usleep(150_000)
                let before = writer.ackedWrites.count
                _ = try f.client().checkpoint(disk: "d0")
                let after = writer.ackedWrites.count
                taken.append((before...(after + 1), XXH3.hash128(try readExport(f.checkpointURI))))
                usleep(100_000)
                #expect(try f.cli(["release", "--disk", "d0"]).succeeded)
            }
            writer.stop()
            if let failure = writer.failure { throw CommandError(description: "writer: \(failure)") }
            let writes = writer.ackedWrites
            // Replay the writes in order and look for each frozen image among the prefixes.
            var applied = 0
            for (n, t) in taken.enumerated() {
                var found = false
                while applied <= min(t.range.upperBound, writes.count) {
                    if applied >= t.range.lowerBound && XXH3.hash128(model.bytes) == t.frozen { found = true; break }
                    if applied == writes.count { break }
                    model.write(writes[applied].data, at: writes[applied].offset)
                    applied += 1
                }
                #expect(found, "checkpoint \(n): the frozen base is not the disk after any prefix of \(t.range) acknowledged writes")
            }
            while applied < writes.count {
                model.write(writes[applied].data, at: writes[applied].offset)
                applied += 1
            }
            expectSame(try fileBytes(diskPath), model.bytes, "the base after the last release")
            let changes = try f.changes(since: c0)
            if let missed = TrackingOracleTests.covers(changes, writes.map { ByteRange(offset: $0.offset, length: UInt64($0.data.count)) }) {
                Issue.record("changes --since \(c0) miss \(missed)")
            }
            f.stop()
        }
    }
}
