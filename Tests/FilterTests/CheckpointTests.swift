import BlockIO
import Filter
import Foundation
import Testing
import TestSupport

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
        var model = try makeDisk(diskPath, size: Self.size, seed: 31)
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

                let r = try f.cli(["release", "--disk", "d0"] + (abort ? ["--abort"] : []))
                #expect(r.succeeded, "release failed: \(r.stderr)")
                #expect(try f.status().checkpoint == nil)
                let base = try fileBytes(diskPath)
                expectSame(base, model.bytes, "round \(round): base after release")

                // No change is lost, whichever way the checkpoint ended.
                let changes = try f.cliChanges(since: c0)
                if let missed = TrackingOracleTests.covers(changes, allWrites) {
                    Issue.record("round \(round): changes --since \(c0) miss the write \(missed)")
                }
                let blocks = DiskModel.blocks(of: changes, granularity: g)
                #expect(blocks == DiskModel.blocks(of: allWrites, granularity: g), "round \(round): changes --since C0 are not the written blocks")
            }
            #expect(try f.stop() == 0)
        }
        let file = try fileBytes(diskPath)
        expectSame(file, model.bytes, "the flat file after stop")
    }
}
