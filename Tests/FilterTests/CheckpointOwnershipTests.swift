import BlockIO
import ChangeTracking
import Filter
import Foundation
import NBD
import Testing
import TestSupport
import TrackerControl

/// Trust item 6: pull-mode readers (`NAME@checkpoint`) and who holds a checkpoint.
///
/// A connection to `NAME@checkpoint` belongs to the checkpoint it opened: once that one is
/// released its reads fail, and they never return a later checkpoint's bytes. A checkpoint
/// taken from the CLI is held by a lease (or `--owner-pid`), and one with a reader connected
/// is never taken away by a backup.
@Suite(.serialized)
struct CheckpointOwnershipTests {
    static let size: UInt64 = 8 << 20

    func connect(_ f: FilterProcess, _ export: String) throws -> NBDClient {
        try NBDClient.connect(try NBDURI(parsing: f.uri(export)))
    }

    static func changeID(_ r: CommandResult) throws -> String {
        let json = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any]
        return try #require(json?["changeID"] as? String)
    }

    @Test
    func aCheckpointReaderNeverReadsAnotherCheckpoint() throws {
        let dir = try TemporaryDirectory("ckpt-reader")
        let diskPath = dir.file("disk.raw")
        var model = try DiskModel.create(at: diskPath, size: Self.size, seed: 61)
        let filter = FilterProcess(directory: dir, diskPath: diskPath)
        try withFilter(filter) { f in
            let first = try f.cli(["checkpoint", "--disk", "d0", "--json"])
            #expect(first.succeeded, "\(first.stderr)")
            let frozen = model.bytes
            let reader = try connect(f, "d0@checkpoint")
            defer { reader.close() }
            #expect(try reader.read(offset: 0, length: 65536) == Array(frozen[0..<65536]))

            // The VM writes; the reader still sees the checkpoint.
            let live = try connect(f, "d0")
            defer { live.close() }
            let newBytes = [UInt8](repeating: 0xC3, count: 65536)
            try live.write(offset: 0, data: newBytes)
            try live.flush()
            model.write(newBytes, at: 0)
            #expect(try reader.read(offset: 0, length: 65536) == Array(frozen[0..<65536]))

            // Released (by someone else) and a new checkpoint taken: the old connection fails,
            // it never returns the new checkpoint's bytes.
            #expect(try f.cli(["release", "--disk", "d0", "--abort"]).succeeded)
            #expect(throws: (any Error).self, "a read of a released checkpoint succeeded") {
                _ = try reader.read(offset: 0, length: 65536)
            }
            #expect(try f.cli(["checkpoint", "--disk", "d0"]).succeeded)
            do {
                let bytes = try reader.read(offset: 0, length: 65536)
                Issue.record("the old connection read \(bytes == newBytes ? "the new checkpoint's bytes" : "bytes") after its checkpoint was released")
            } catch {}
            // A new connection reads the new checkpoint; one that names the first checkpoint
            // (NAME@SEQUENCE) is refused, one that names the second is served.
            let second = try connect(f, "d0@checkpoint")
            #expect(try second.read(offset: 0, length: 65536) == newBytes)
            second.close()
            let firstID = try Self.changeID(first)
            let secondID = try #require(try f.status().checkpoint).changeID
            let firstSequence = try #require(ChangeID(firstID)).sequence
            let secondSequence = try #require(ChangeID(secondID)).sequence
            #expect(throws: (any Error).self, "d0@\(firstSequence) named a released checkpoint and was served") {
                _ = try connect(f, "d0@\(firstSequence)")
            }
            let pinned = try connect(f, "d0@\(secondSequence)")
            #expect(try pinned.read(offset: 0, length: 65536) == newBytes)
            pinned.close()
            #expect(try f.cli(["release", "--disk", "d0"]).succeeded)
            f.stop()
        }
    }

    @Test
    func aBackupLeavesACheckpointInUseAloneAndReleasesAStaleOne() throws {
        let dir = try TemporaryDirectory("ckpt-owner")
        let diskPath = dir.file("disk.raw")
        try DiskModel.create(at: diskPath, size: Self.size, seed: 62)
        let repo = dir.file("repo")
        try Tessera.ok(["init", "--repo", repo])
        let filter = FilterProcess(directory: dir, diskPath: diskPath)
        try withFilter(filter) { f in
            func backup() throws -> CommandResult {
                try Tessera.run(["backup", "--repo", repo, "--disk", "d0", "--filter", f.controlPath])
            }
            // A CLI checkpoint (its process exits at once) is held by its lease.
            #expect(try f.cli(["checkpoint", "--disk", "d0", "--lease", "1h"]).succeeded)
            var open = try #require(try f.status().checkpoint)
            #expect(open.owner?.leaseExpiresAt != nil && open.stale == nil, "\(open)")
            var r = try backup()
            #expect(!r.succeeded && r.stderr.contains("lease"), "a backup took a leased checkpoint away: \(r.stderr)")
            #expect(try f.status().checkpoint?.changeID == open.changeID)
            #expect(try f.cli(["release", "--disk", "d0", "--abort"]).succeeded)

            // A lease that ran out, but a reader still connected: in use.
            #expect(try f.cli(["checkpoint", "--disk", "d0", "--lease", "1s"]).succeeded)
            let reader = try connect(f, "d0@checkpoint")
            // The point: the 1 s lease runs out while the reader is connected.
            usleep(1_500_000)
            open = try #require(try f.status().checkpoint)
            #expect(open.readers == 1 && open.stale == nil, "\(open)")
            r = try backup()
            #expect(!r.succeeded && r.stderr.contains("reader"), "a backup took a checkpoint from its reader: \(r.stderr)")
            // The reader leaves: stale, and the next backup releases it (abort) and runs.
            reader.close()
            // Nothing announces that the filter noticed the disconnect: STATUS says so.
            _ = try pollUntil(timeout: 5) { try f.status().checkpoint?.readers == 0 }
            #expect(try f.status().checkpoint?.stale != nil)
            r = try backup()
            #expect(r.succeeded, "the backup did not take over a stale checkpoint: \(r.stderr)")

            // --owner-pid: held while that process lives.
            let holder = try ChildProcess("/bin/sleep", ["60"])
            #expect(try f.cli(["checkpoint", "--disk", "d0", "--owner-pid", "\(holder.pid)"]).succeeded)
            r = try backup()
            #expect(!r.succeeded && r.stderr.contains("process \(holder.pid)") && !r.stderr.contains("release --control"),
                    "a backup took a checkpoint from a live process, or told to release it: \(r.stderr)")
            holder.kill()
            r = try backup()
            #expect(r.succeeded, "the backup did not take over the checkpoint of a process that died: \(r.stderr)")
            f.stop()
        }
    }
}
