import BlockIO
import Filter
import TrackerControl
import Foundation
import NBD
import Testing
import TestSupport

/// Promises 4 and 5: a hard kill (SIGKILL) loses no acknowledged write and no change, during
/// plain writes, during a merge, and with a checkpoint open.
@Suite(.serialized)
struct CrashTests {
    static let size: UInt64 = 16 << 20
    static var long: Bool { ProcessInfo.processInfo.environment["TESSERA_LONG"] == "1" }

    /// Rounds of: two writers on disjoint halves of the disk, SIGKILL at a random instant,
    /// restart on the same state directory. Round 1 of every 4 has a checkpoint open; in
    /// round 3 of every 4 a CHECKPOINT races the kill (it may or may not have happened).
    @Test
    func killDuringWritesLosesNothing() throws {
        let rounds = Self.long ? 24 : 4
        let dir = try TemporaryDirectory("filter-kill")
        let diskPath = dir.file("disk.raw")
        var model = try DiskModel.create(at: diskPath, size: Self.size, seed: 41)
        // Persisting every second makes some kills land after a state write that reset the
        // hot activity log extents (marks after it must be logged again).
        let filter = FilterProcess(directory: dir, diskPath: diskPath, extraArguments: ["--persist-interval", "1"])
        var allAcked: [ByteRange] = []
        var firstID: String?
        for round in 0..<rounds {
            let seed = UInt64(1000 + round)
            let withCheckpoint = round % 4 == 1
            let racingCheckpoint = round % 4 == 3
            try withFilter(filter) { f in
                let status = try f.status()
                let before = status.changeID
                if let firstID {
                    // The generation survived the crash: the first change ID still answers.
                    #expect(status.generation == firstID.split(separator: "/").first.map(String.init), "round \(round): a new generation after a crash: \(status.notes)")
                } else {
                    firstID = before
                }
                if withCheckpoint { _ = try f.client().checkpoint(disk: "d0") }
                var rng = SeededGenerator(seed: seed)
                let half = Self.size / 2
                let writers = [AckedWriter(uri: f.uri, base: 0, size: half, seed: seed),
                               AckedWriter(uri: f.uri, base: half, size: half, seed: seed + 500)]
                // The point of the test: the kill lands at a random instant of the writes (and of
                // a racing CHECKPOINT).
                usleep(UInt32.random(in: 50_000...(round % 3 == 2 ? 2_500_000 : 400_000), using: &rng))
                var checkpointCLI: ChildProcess?
                if racingCheckpoint {
                    checkpointCLI = try ChildProcess(tessera: ["filter", "checkpoint", "--disk", "d0", "--control", f.controlPath])
                    usleep(UInt32.random(in: 0...40_000, using: &rng))
                }
                f.kill()
                let checkpointAnswered = checkpointCLI.map { $0.wait(timeout: 120).result.succeeded } ?? false
                var acked: [ByteRange] = []
                var uncertain: [(ByteRange?, [UInt8])] = []
                for w in writers {
                    w.wait()
                    if let failure = w.failure { throw CommandError(description: "seed \(seed): writer: \(failure)") }
                    acked += w.ackedWrites.map { ByteRange(offset: $0.offset, length: UInt64($0.data.count)) }
                    uncertain.append(w.apply(to: &model))
                }
                #expect(!acked.isEmpty, "seed \(seed): no write was acknowledged before the kill")
                allAcked += acked

                try f.start()
                let open = try f.status().checkpoint != nil
                if withCheckpoint { #expect(open, "seed \(seed): the checkpoint did not survive SIGKILL") }
                if checkpointAnswered {
                    #expect(open, "seed \(seed): a CHECKPOINT that was answered did not survive SIGKILL")
                }
                if open {
                    let live = try readExport(f.uri)
                    if let diff = compareHalves(live, model.bytes, uncertain) {
                        Issue.record("seed \(seed): an acknowledged write is missing from the live export after SIGKILL: \(diff)")
                    }
                    let r = try f.cli(["release", "--disk", "d0"])
                    #expect(r.succeeded, "seed \(seed): release after SIGKILL: \(r.stderr)")
                }
                let file = try fileBytes(diskPath)
                if let diff = compareHalves(file, model.bytes, uncertain) {
                    Issue.record("seed \(seed): an acknowledged write is missing from the file after SIGKILL: \(diff)")
                }
                // Bytes of a write in flight at the kill are whatever the file holds now.
                for (range, _) in uncertain {
                    if let range { model.bytes.replaceSubrange(Int(range.offset)..<Int(range.end), with: file[Int(range.offset)..<Int(range.end)]) }
                }
                for id in [before, firstID!] {
                    let changes = try f.changes(since: id)
                    if let missed = TrackingOracleTests.covers(changes, id == before ? acked : allAcked) {
                        Issue.record("seed \(seed): changes --since \(id) after SIGKILL miss the acknowledged write \(missed)")
                    }
                }
                f.kill()
            }
        }
    }

    /// `compare` for two writers, each with its own write in flight.
    func compareHalves(_ actual: [UInt8], _ model: [UInt8], _ uncertain: [(ByteRange?, [UInt8])]) -> String? {
        guard actual != model else { return nil }
        var patched = model
        for (range, new) in uncertain {
            guard let range else { continue }
            for i in 0..<Int(range.length) where actual[Int(range.offset) + i] == new[i] {
                patched[Int(range.offset) + i] = new[i]
            }
        }
        return patched == actual ? nil : firstDifference(actual, patched)
    }

    /// Writes land correctly while a release merges the overlay back.
    @Test(.enabled(if: ExternalTool.available("qemu-io")))
    func writesDuringReleaseLandInTheBase() throws {
        let size: UInt64 = 64 << 20
        let dir = try TemporaryDirectory("filter-relw")
        let diskPath = dir.file("disk.raw")
        var model = try DiskModel.create(at: diskPath, size: size)
        let filter = FilterProcess(directory: dir, diskPath: diskPath)
        var rng = SeededGenerator(seed: 81)
        try withFilter(filter) { f in
            let c0 = try f.status().changeID
            _ = try f.client().checkpoint(disk: "d0")
            try Self.scatteredWrites(f.uri, size: size, total: 32 << 20, rng: &rng, model: &model)
            let start = model.log.count
            let writer = AckedWriter(uri: f.uri, size: size, seed: 82)
            let r = try f.cli(["release", "--disk", "d0"])
            #expect(r.succeeded, "release: \(r.stderr)")
            // Let the writer go on writing after the release for a while (the point: writes
            // that land in the base once the merge is done).
            usleep(100_000)
            writer.stop()
            if let failure = writer.failure { throw CommandError(description: "writer: \(failure)") }
            #expect(writer.unacknowledged == nil)
            _ = writer.apply(to: &model)
            #expect(model.log.count > start, "no write ran during the release")
            #expect(try f.status().checkpoint == nil)
            expectSame(try fileBytes(diskPath), model.bytes, "the base after a release with concurrent writes")
            let changes = try f.changes(since: c0)
            if let missed = TrackingOracleTests.covers(changes, model.log) {
                Issue.record("changes --since \(c0) miss \(missed)")
            }
            f.stop()
        }
    }

    /// Writes `length` bytes in 1 MiB pieces at scattered offsets through qemu-io.
    static func scatteredWrites(_ uri: String, size: UInt64, total: UInt64, rng: inout SeededGenerator, model: inout DiskModel) throws {
        var commands: [String] = []
        var written: UInt64 = 0
        while written < total {
            let length = UInt64.random(in: (256 << 10)...(1 << 20), using: &rng)
            let offset = UInt64.random(in: 0...(size - length), using: &rng)
            let pattern = UInt8.random(in: 1...255, using: &rng)
            commands.append("write -P 0x\(String(pattern, radix: 16)) \(offset) \(length)")
            model.fill(pattern, at: offset, length: length)
            written += length
        }
        try InteropTests.qemuIO(uri, commands)
    }

    @Test(.enabled(if: ExternalTool.available("qemu-io")))
    func killDuringMergeResumesOnRestart() throws {
        let size: UInt64 = 128 << 20
        let dir = try TemporaryDirectory("filter-merge")
        let diskPath = dir.file("disk.raw")
        var model = try DiskModel.create(at: diskPath, size: size)
        let filter = FilterProcess(directory: dir, diskPath: diskPath)
        var rng = SeededGenerator(seed: 51)
        try withFilter(filter) { f in
            let c0 = try f.status().changeID
            _ = try f.client().checkpoint(disk: "d0")
            let start = model.log.count
            try Self.scatteredWrites(f.uri, size: size, total: 64 << 20, rng: &rng, model: &model)
            let writes = Array(model.log[start...])

            // Start the release in the background and kill the filter once it is merging.
            let release = try ChildProcess(tessera: ["filter", "release", "--disk", "d0", "--control", f.controlPath])
            // Nothing announces that the merge has begun: STATUS says so.
            _ = pollUntil(timeout: 30, every: 0.002) { !release.isRunning || (try? f.status().merging) == true }
            f.kill()
            let releaseFinished = release.wait(timeout: 120).result.succeeded

            try f.start()
            let s = try f.status()
            #expect(s.checkpoint == nil, "the merge must finish on restart: \(s)")
            #expect(!s.merging)
            if !releaseFinished {
                #expect(s.notes.contains { $0.contains("resumed a release") }, "no note about the resumed release: \(s.notes)")
            }
            let file = try fileBytes(diskPath)
            expectSame(file, model.bytes, "base after the resumed merge")
            let changes = try f.changes(since: c0)
            if let missed = TrackingOracleTests.covers(changes, writes) {
                Issue.record("changes --since \(c0) after a killed merge miss \(missed)")
            }
            f.stop()
        }
    }

    @Test(.enabled(if: ExternalTool.available("qemu-io", "nbdcopy")))
    func killWithCheckpointOpenKeepsTheOverlay() throws {
        let dir = try TemporaryDirectory("filter-ckkill")
        let diskPath = dir.file("disk.raw")
        var model = try DiskModel.create(at: diskPath, size: Self.size, seed: 61)
        let frozenModel = model.bytes
        let filter = FilterProcess(directory: dir, diskPath: diskPath)
        var rng = SeededGenerator(seed: 62)
        try withFilter(filter) { f in
            let c0 = try f.status().changeID
            let checkpoint = try f.client().checkpoint(disk: "d0")
            let start = model.log.count
            // qemu-io flushes when it closes the image.
            _ = try TrackingOracleTests.round(f.uri, &rng, model: &model, writes: 30)
            // Then acknowledged writes without any FLUSH, twice into the same blocks (the
            // second lands in a slot whose record was never flushed).
            let client = try NBDClient.connect(try NBDURI(parsing: f.uri))
            for i in 0..<8 {
                let block = UInt64(i * 5 + 3) * 65536
                let a = rng.bytes(1000), b = rng.bytes(3000)
                try client.write(offset: block + 100, data: a)
                model.write(a, at: block + 100)
                try client.write(offset: block + 20_000, data: b)
                model.write(b, at: block + 20_000)
            }
            let writes = Array(model.log[start...])
            f.kill()
            client.close()

            try f.start()
            let s = try f.status()
            #expect(s.checkpoint?.changeID == checkpoint.changeID, "the open checkpoint must survive SIGKILL: \(s)")
            let live = dir.file("live.raw"), frozen = dir.file("frozen.raw")
            try run("nbdcopy", [f.uri, live])
            try run("nbdcopy", [f.checkpointURI, frozen])
            let liveBytes = try fileBytes(live)
            expectSame(liveBytes, model.bytes, "live export after SIGKILL")
            expectSame(try fileBytes(frozen), frozenModel, "the checkpoint export changed")
            expectSame(try fileBytes(diskPath), frozenModel, "the base changed while the checkpoint was open")

            let r = try f.cli(["release", "--disk", "d0", "--abort"])
            #expect(r.succeeded, "release --abort after a crash failed: \(r.stderr)")
            #expect(try f.status().checkpoint == nil)
            let file = try fileBytes(diskPath)
            expectSame(file, model.bytes, "base after release --abort")
            let changes = try f.changes(since: c0)
            if let missed = TrackingOracleTests.covers(changes, writes) {
                Issue.record("changes --since \(c0) miss \(missed)")
            }
            f.stop()
        }
    }
}
