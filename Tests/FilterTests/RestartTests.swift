import BlockIO
import Filter
import Foundation
import Testing
import TestSupport
import TrackerControl
#if canImport(Glibc)
import Glibc
#endif

/// Promise 7: a clean restart keeps the generation and old change IDs answer; a write that
/// bypassed the filter while it was stopped starts a new generation and old change IDs get
/// `full-read-required`.
@Suite(.serialized)
struct RestartTests {
    static let size: UInt64 = 8 << 20

    @Test(.enabled(if: ExternalTool.available("qemu-io")))
    func cleanRestartKeepsTheGenerationAndBypassStartsANewOne() throws {
        let dir = try TemporaryDirectory("filter-restart")
        let diskPath = dir.file("disk.raw")
        var model = try DiskModel.create(at: diskPath, size: Self.size, seed: 71)
        let filter = FilterProcess(directory: dir, diskPath: diskPath)
        var rng = SeededGenerator(seed: 72)

        var id0 = "", generation = ""
        var writes: [ByteRange] = []
        try withFilter(filter) { f in
            let s = try f.status()
            id0 = s.changeID
            generation = s.generation
            writes += try TrackingOracleTests.round(f.uri, &rng, model: &model)
            _ = try f.client().checkpoint(disk: "d0")
            _ = try f.client().release(disk: "d0", commit: true)
            writes += try TrackingOracleTests.round(f.uri, &rng, model: &model)
            f.stop()
        }
        #expect(!FileManager.default.fileExists(atPath: filter.controlPath), "a clean stop removes the control socket")

        // Clean restart: the same generation; the change ID from before still answers, exactly.
        try withFilter(filter) { f in
            let s = try f.status()
            #expect(s.generation == generation, "a clean restart started a new generation: \(s.notes)")
            let changes = try f.changes(since: id0)
            #expect(DiskModel.blocks(of: changes, granularity: 65536) == DiskModel.blocks(of: writes, granularity: 65536),
                    "changes --since \(id0) after a clean restart are not the written blocks")
            f.stop()
        }
        expectSame(try fileBytes(diskPath), model.bytes, "the flat file after a clean restart")

        // A write behind the filter's back (in place) while it is stopped. Wait a little so
        // the file system's timestamp granularity cannot hide the new mtime.
        usleep(50_000)
        try BlockFile(path: diskPath, mode: .readWrite).write(Array("bypass".utf8), at: 4096)
        var id1 = ""
        try withFilter(filter) { f in
            let s = try f.status()
            #expect(s.generation != generation, "a write that bypassed the filter must start a new generation")
            #expect(!s.notes.isEmpty, "STATUS should say why a new generation started")
            let r = try f.cli(["changes", "--disk", "d0", "--since", id0])
            #expect(r.status == 1 && r.stderr.contains("full read"), "the old change ID must need a full read: \(r.status) \(r.stderr) \(r.stdout)")
            do { _ = try f.client().queryChanges(disk: "d0", since: id0); Issue.record("an old-generation change ID was answered") }
            catch let e as FilterError { #expect(e.code == .fullReadRequired) }
            id1 = s.changeID
            generation = s.generation
            f.stop()
        }

        // An append (the disk grew) while stopped: again a new generation.
        usleep(50_000)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: diskPath))
        handle.seekToEndOfFile()
        handle.write(Data(count: 65536))
        try handle.close()
        try withFilter(filter) { f in
            let s = try f.status()
            #expect(s.generation != generation && s.size == Self.size + 65536, "an append must start a new generation: \(s)")
            do { _ = try f.client().queryChanges(disk: "d0", since: id1); Issue.record("an old-generation change ID was answered") }
            catch let e as FilterError { #expect(e.code == .fullReadRequired) }
            f.stop()
        }
    }

    /// A clean stop with a checkpoint open keeps it open: the overlay's data, the frozen
    /// base and the change IDs all survive the restart.
    @Test(.enabled(if: ExternalTool.available("qemu-io")))
    func cleanRestartKeepsAnOpenCheckpoint() throws {
        let dir = try TemporaryDirectory("filter-rsck")
        let diskPath = dir.file("disk.raw")
        var model = try DiskModel.create(at: diskPath, size: Self.size, seed: 73)
        let frozen = model.bytes
        let filter = FilterProcess(directory: dir, diskPath: diskPath)
        var rng = SeededGenerator(seed: 74)
        var c0 = "", checkpoint = ""
        try withFilter(filter) { f in
            c0 = try f.status().changeID
            checkpoint = try f.client().checkpoint(disk: "d0").changeID
            _ = try TrackingOracleTests.round(f.uri, &rng, model: &model)
            f.stop()
        }
        expectSame(try fileBytes(diskPath), frozen, "the base after a clean stop with a checkpoint open")
        try withFilter(filter) { f in
            let s = try f.status()
            #expect(s.checkpoint?.changeID == checkpoint, "the checkpoint must stay open across a clean restart: \(s)")
            expectSame(try readExport(f.uri), model.bytes, "the live export after a clean restart")
            expectSame(try readExport(f.checkpointURI), frozen, "the checkpoint export after a clean restart")
            let r = try f.cli(["release", "--disk", "d0"])
            #expect(r.succeeded, "release: \(r.stderr)")
            expectSame(try fileBytes(diskPath), model.bytes, "the base after release")
            let changes = try f.changes(since: c0)
            if let missed = TrackingOracleTests.covers(changes, model.log) { Issue.record("changes --since \(c0) miss \(missed)") }
            f.stop()
        }
    }

    /// DETACH keeps the tracking state (ATTACH continues the generation); RESET starts a new one.
    @Test(.enabled(if: ExternalTool.available("qemu-io", "nbdinfo")))
    func detachAttachAndReset() throws {
        let dir = try TemporaryDirectory("filter-detach")
        let diskPath = dir.file("disk.raw")
        var model = try DiskModel.create(at: diskPath, size: Self.size, seed: 75)
        let filter = FilterProcess(directory: dir, diskPath: diskPath)
        var rng = SeededGenerator(seed: 76)
        try withFilter(filter) { f in
            let s0 = try f.status()
            let log = try TrackingOracleTests.round(f.uri, &rng, model: &model)
            _ = try f.client().checkpoint(disk: "d0")
            do { try f.client().detach(disk: "d0"); Issue.record("DETACH with a checkpoint open succeeded") }
            catch let e as FilterError { #expect(e.code == .checkpointOpen) }
            #expect(try f.cli(["release", "--disk", "d0"]).succeeded)
            #expect(try f.cli(["detach", "--disk", "d0"]).succeeded)
            #expect(try f.client().status().isEmpty)
            #expect(try InteropTests.listExports(f.uri).isEmpty, "a detached disk is no longer exported")
            let attached = try f.cli(["attach", "--disk", "d0", "--path", diskPath, "--json"])
            #expect(attached.succeeded, "\(attached.stderr)")
            let s1 = try f.status()
            #expect(s1.generation == s0.generation, "detach + attach must continue the generation: \(s1.notes)")
            let changes = try f.changes(since: s0.changeID)
            #expect(DiskModel.blocks(of: changes, granularity: 65536) == DiskModel.blocks(of: log, granularity: 65536))
            expectSame(try readExport(f.uri), model.bytes, "the export after re-attaching")

            let reset = try f.cli(["reset", "--disk", "d0"])
            #expect(reset.succeeded, "\(reset.stderr)")
            let s2 = try f.status()
            #expect(s2.generation != s0.generation)
            do { _ = try f.client().queryChanges(disk: "d0", since: s0.changeID); Issue.record("an ID from before RESET was answered") }
            catch let e as FilterError { #expect(e.code == .fullReadRequired) }
            f.stop()
        }
    }
}
