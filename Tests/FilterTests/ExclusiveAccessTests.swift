import BlockIO
import ChangeTracking
import Filter
import Foundation
import Logging
import Synchronization
import Testing
import TestSupport
import TrackerControl

/// Trust items 2 and 3: one filter, and one attachment, per state directory and per disk
/// file. A second filter on the same state directory used to replay the log, merge the
/// overlay a second time over newer writes, replace the log the first one writes to and its
/// socket; a file attached under two names had its writes tracked for one name only.
@Suite(.serialized)
struct ExclusiveAccessTests {
    static let size: UInt64 = 8 << 20

    /// What a second filter must leave alone.
    struct Fingerprint: Equatable {
        var logInode: UInt64
        var logBytes: [UInt8]
        var inUse: [UInt8]
        var socketInode: UInt64
        var controlInode: UInt64
    }

    static func fingerprint(_ f: FilterProcess) throws -> Fingerprint {
        func inode(_ path: String) throws -> UInt64 {
            try #require(FileManager.default.attributesOfItem(atPath: path)[.systemFileNumber] as? UInt64)
        }
        let state = "\(f.stateDirectory)/\(f.diskName)"
        return Fingerprint(logInode: try inode("\(state)/activity.log"), logBytes: try fileBytes("\(state)/activity.log"),
                           inUse: try fileBytes("\(state)/in-use"), socketInode: try inode(f.socketPath),
                           controlInode: try inode(f.controlPath))
    }

    /// Runs `tessera filter serve` that must be refused (bounded by a timeout: an accepted one
    /// would serve forever, and is killed).
    static func secondFilter(disk: String, state: String, scratch: TemporaryDirectory, name: String = "d0") throws -> CommandResult {
        try Tessera.run(["filter", "serve", "--disk", "\(name)=\(disk)", "--socket", scratch.file("b-nbd.sock"),
                         "--control", scratch.file("b-ctl.sock"), "--state-dir", state], timeout: 20)
    }

    @Test(.enabled(if: ExternalTool.available("qemu-io")))
    func aSecondFilterOnTheSameStateDirectoryOrDiskIsRefusedAndTouchesNothing() throws {
        let dir = try TemporaryDirectory("filter-exclusive")
        let diskPath = dir.file("disk.raw")
        var model = try DiskModel.create(at: diskPath, size: Self.size, seed: 7)
        let filter = FilterProcess(directory: dir, diskPath: diskPath)
        try withFilter(filter) { f in
            // A checkpoint open and writes in its overlay: what a second instance would merge.
            _ = try f.client().checkpoint(disk: "d0")
            model.fill(0x5A, at: 65536, length: 65536)
            try InteropTests.qemuIO(f.uri, ["write -P 0x5a 65536 65536", "flush"])
            let before = try Self.fingerprint(f)
            let pid = f.pid
            let scratch = try TemporaryDirectory("filter-exclusive-b")

            // The same state directory, the same disk.
            let sameState = try Self.secondFilter(disk: diskPath, state: f.stateDirectory, scratch: scratch)
            #expect(sameState.status != 0, "a second filter on the same state directory was not refused (exit \(sameState.status))")
            #expect(sameState.stderr.contains("process \(pid)"), "the refusal does not name the running filter (pid \(pid)): \(sameState.stderr)")

            // Another state directory, the same disk file (spelled through a symlink).
            let link = dir.file("link.raw")
            try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: diskPath)
            let sameDisk = try Self.secondFilter(disk: link, state: scratch.file("state"), scratch: scratch)
            #expect(sameDisk.status != 0, "a second filter on the same disk file was not refused (exit \(sameDisk.status))")
            #expect(sameDisk.stderr.contains("process \(pid)"), "the refusal does not name the running filter (pid \(pid)): \(sameDisk.stderr)")

            // Nothing of the first filter was touched, and it still serves the right bytes.
            #expect(try Self.fingerprint(f) == before, "the refused filter changed the first filter's files or sockets")
            #expect(try f.status().checkpoint != nil, "the checkpoint is gone")
            model.fill(0x77, at: 3 << 20, length: 4096)
            try InteropTests.qemuIO(f.uri, ["write -P 0x77 \(3 << 20) 4096", "flush"])
            try run("nbdcopy", [f.uri, dir.file("live.raw")])
            expectSame(try fileBytes(dir.file("live.raw")), model.bytes, "live disk after the refused filters")
            let r = try f.cli(["release", "--disk", "d0"])
            #expect(r.succeeded, "release failed: \(r.stderr)")
            f.stop()
        }
        expectSame(try fileBytes(diskPath), model.bytes, "disk after release and stop")
    }

    /// Two ATTACH requests for one name at once: one wins, the other is refused before it
    /// opens the state directory, and the winner keeps the only activity log.
    @Test
    func twoAttachesOfOneNameAtOnceLeaveOneTrackerAndItsLog() throws {
        let dir = try TemporaryDirectory("filter-attach-race")
        _ = try DiskImage.createRaw(path: dir.file("disk.raw"), size: Self.size)
        for round in 0..<20 {
            let state = dir.file("state-\(round)")
            let service = try FilterService(stateDirectory: state, configuration: TrackerConfiguration(),
                                            logger: Logger(label: "test"))
            let outcomes = Mutex<[Result<String, any Error>]>([])
            DispatchQueue.concurrentPerform(iterations: 2) { _ in
                do {
                    let disk = try service.attach(name: "d0", path: dir.file("disk.raw"))
                    outcomes.withLock { $0.append(.success(disk.name)) }
                } catch {
                    outcomes.withLock { $0.append(.failure(error)) }
                }
            }
            let results = outcomes.withLock { $0 }
            let wins = results.filter { if case .success = $0 { true } else { false } }.count
            #expect(wins == 1, "round \(round): \(wins) attaches of one name succeeded: \(results)")
            // The winner's marks reach the log it holds open: a write into a cold extent
            // logs it; a crash now must find it in `activity.log`.
            let disk = try service.disk(named: "d0")
            let logInode = try #require(FileManager.default.attributesOfItem(atPath: "\(state)/d0/activity.log")[.systemFileNumber] as? UInt64)
            try [UInt8](repeating: 1, count: 4096).withUnsafeBytes { try disk.write(offset: 5 << 20, bytes: $0, fua: false) }
            let logNow = try #require(FileManager.default.attributesOfItem(atPath: "\(state)/d0/activity.log")[.systemFileNumber] as? UInt64)
            #expect(logNow == logInode, "round \(round): the activity log was replaced under the winner")
            let logged = try fileBytes("\(state)/d0/activity.log")
            #expect(logged[4096...].contains { $0 != 0 }, "round \(round): the winner's mark is not in the activity log on disk")
            service.closeAll()
        }
    }

    /// One file under two names (a second --disk, a symlink, another spelling, or ATTACH at run
    /// time): refused, so no write escapes the tracking of the other name.
    @Test
    func oneFileIsAttachedOnceWhateverItsName() throws {
        let dir = try TemporaryDirectory("filter-alias")
        _ = try DiskImage.createRaw(path: dir.file("disk.raw"), size: Self.size)
        try FileManager.default.createSymbolicLink(atPath: dir.file("alias.raw"), withDestinationPath: dir.file("disk.raw"))
        try FileManager.default.createDirectory(atPath: dir.file("sub"), withIntermediateDirectories: true)
        let service = try FilterService(stateDirectory: dir.file("state"), configuration: TrackerConfiguration(),
                                        logger: Logger(label: "test"))
        defer { service.closeAll() }
        try service.attach(name: "a", path: dir.file("disk.raw"))
        for (name, path) in [("b", dir.file("disk.raw")), ("c", dir.file("alias.raw")), ("d", dir.file("sub/../disk.raw"))] {
            #expect(throws: FilterError.self, "\(name) = \(path) attached the same file a second time") {
                try service.attach(name: name, path: path)
            }
            do { try service.attach(name: name, path: path) } catch let e as FilterError {
                #expect(e.message.contains("already attached as disk 'a'"), "\(e.message)")
            }
        }
        #expect(service.diskNames == ["a"])
        // A relative path is the caller's business (the CLI resolves it); the service refuses it.
        #expect(throws: FilterError.self) { try service.attach(name: "e", path: "disk.raw") }
    }

    /// `tessera filter serve --disk a=F --disk b=F` and `filter attach --path REL` (resolved in
    /// the caller's directory, not the filter's).
    @Test
    func theCommandLineRefusesAliasesAndResolvesRelativePaths() throws {
        let dir = try TemporaryDirectory("filter-alias-cli")
        _ = try DiskImage.createRaw(path: dir.file("disk.raw"), size: Self.size)
        _ = try DiskImage.createRaw(path: dir.file("other.raw"), size: Self.size)
        let twice = try Tessera.run(["filter", "serve", "--disk", "a=\(dir.file("disk.raw"))", "--disk", "b=\(dir.file("disk.raw"))",
                                     "--socket", dir.file("x.sock"), "--control", dir.file("x-ctl.sock"),
                                     "--state-dir", dir.file("x-state")], timeout: 20)
        #expect(twice.status != 0, "two names for one file were served (exit \(twice.status))")
        #expect(twice.stderr.contains("already attached as disk 'a'"), "\(twice.stderr)")

        let filter = FilterProcess(directory: dir, diskPath: dir.file("disk.raw"))
        try withFilter(filter) { f in
            let attach = try runCommand("/bin/sh", ["-c", "cd \(dir.path) && \(Tessera.binary) filter attach --disk o --path other.raw --control \(f.controlPath) --json"])
            #expect(attach.succeeded, "attach of a relative path failed: \(attach.stderr)")
            let attached = try f.client().status(disk: "o").first
            #expect(attached?.path == dir.file("other.raw"), "attached \(attached?.path ?? "nothing")")
            f.stop()
        }
    }

    /// Trust item 4, end to end: `restore --only-changed` or `--force` into the disk a running
    /// filter serves is refused (the filter holds the file), and the disk is untouched; the
    /// next backup through the filter still restores exactly the disk.
    @Test
    func aRestoreIntoADiskTheFilterServesIsRefused() throws {
        let dir = try TemporaryDirectory("filter-restore-refused")
        let diskPath = dir.file("disk.raw")
        let model = try DiskModel.create(at: diskPath, size: Self.size, seed: 8)
        let repo = dir.file("repo")
        try Tessera.ok(["init", "--repo", repo])
        let filter = FilterProcess(directory: dir, diskPath: diskPath)
        try withFilter(filter) { f in
            let pid = f.pid
            let first = try Tessera.summary(try Tessera.ok(["backup", "--repo", repo, "--disk", "d0", "--filter", f.controlPath, "--json"]))
            let snapshot = try #require(first["snapshot"] as? String)
            // An older disk image of the same VM, as an operator would restore by mistake.
            try InteropTests.qemuIO(f.uri, ["write -P 0x42 0 65536", "flush"])
            let before = try fileBytes(diskPath)
            for mode in ["--only-changed", "--force"] {
                let r = try Tessera.run(["restore", "--repo", repo, snapshot, "--to", diskPath, mode])
                #expect(r.status == 1 && r.stderr.contains("process \(pid)") && r.stderr.contains("filter"),
                        "restore \(mode) into the served disk: exit \(r.status), \(r.stderr)")
                #expect(try fileBytes(diskPath) == before, "restore \(mode) wrote to the disk the filter serves")
            }
            let next = try Tessera.summary(try Tessera.ok(["backup", "--repo", repo, "--disk", "d0", "--filter", f.controlPath, "--json"]))
            let restored = try Tessera.restore(repo: repo, snapshot: try #require(next["snapshot"] as? String), scratch: dir.path)
            #expect(Array(restored) == before, "the next backup does not restore the disk")
            #expect(model.bytes != before)
            f.stop()
        }
    }
}
