import Foundation
import Testing
import TestSupport

/// `tessera serve` (instant restore) with real NBD clients: qemu-img copies the snapshot out
/// byte for byte, nbdinfo's map shows exactly the zero chunks as holes, writes are refused,
/// prune waits for the served snapshot, and a damaged chunk is an I/O error for its bytes only.
struct ServeCLITests {
    /// `tessera serve` as a child process, returned once it says it serves (it listens by then).
    final class Server {
        let process: ChildProcess
        let socket: String

        init(repo: String, snapshot: String, directory: String) throws {
            socket = "\(directory)/serve.sock"
            process = try ChildProcess(tessera: ["serve", "--repo", repo, snapshot, "--socket", socket, "--name", "snap"])
            guard process.waitForLine(containing: "serving snapshot") else {
                throw CommandError(description: "tessera serve did not start: \(process.kill().stderr)")
            }
        }

        var uri: String { "nbd+unix:///snap?socket=\(socket)" }

        /// SIGTERM (SIGKILL after 60 s); returns the exit status.
        @discardableResult
        func stop() -> Int32 { process.terminate() }
    }

    @Test(.enabled(if: ExternalTool.available("qemu-img", "qemu-io", "nbdinfo")))
    func aServedSnapshotReadsBackExactlyAndStaysReadOnly() throws {
        let dir = try TemporaryDirectory("serve")
        let repo = dir.file("repo"), source = dir.file("disk.raw")
        try Tessera.ok(["init", "--repo", repo])
        let disk = try makeDisk(at: source, chunks: 24, seed: 41)
        let snapshot = try Tessera.backup(repo: repo, source: source)
        let server = try Server(repo: repo, snapshot: String(snapshot.prefix(8)), directory: dir.path)

        // Byte for byte through qemu-img.
        let copy = dir.file("copy.raw")
        let convert = try runCommand("qemu-img", ["convert", "-f", "raw", "-O", "raw", server.uri, copy])
        #expect(convert.succeeded, "\(convert.stderr)")
        let copied = try Data(contentsOf: URL(fileURLWithPath: copy))
        #expect(copied == disk, "the served snapshot differs from the disk it was taken of")

        // base:allocation: holes exactly where the disk has zero chunks (every fourth).
        let map = try runCommand("nbdinfo", ["--map", "--json", server.uri])
        #expect(map.succeeded, "\(map.stderr)")
        let extents = try #require(try JSONSerialization.jsonObject(with: Data(map.stdout.utf8)) as? [[String: Any]])
        var holes: Set<Int> = []
        for e in extents where ((e["type"] as? Int) ?? 0) & 1 == 1 {
            let offset = (e["offset"] as? Int) ?? 0, length = (e["length"] as? Int) ?? 0
            for c in stride(from: offset / 65536, to: (offset + length) / 65536, by: 1) { holes.insert(c) }
        }
        #expect(holes == Set((0..<24).filter { $0 % 4 == 3 }))

        // Read-only: a write is refused and the repository is untouched.
        let write = try runCommand("qemu-io", ["-f", "raw", "-c", "write -P 7 0 4k", server.uri])
        #expect(!write.succeeded && (write.stdout + write.stderr).contains("Permission denied"), "\(write.stdout)\(write.stderr)")
        // Prune waits for the served snapshot (shared lock held), with the documented exit code.
        let prune = try Tessera.run(["prune", "--repo", repo])
        #expect(prune.status == 11, "prune exited \(prune.status): \(prune.stderr)")
        // The lock is live, so a plain unlock leaves it; --remove-all is the operator's override.
        #expect(try Tessera.ok(["unlock", "--repo", repo]).stdout.contains("no lock to remove"))
        #expect(try Tessera.run(["prune", "--repo", repo]).status == 11)
        let forced = try Tessera.ok(["unlock", "--repo", repo, "--remove-all"])
        #expect(forced.stdout.contains("1 lock removed") && forced.stdout.contains("pid \(server.process.pid)"), "\(forced.stdout)")

        #expect(server.stop() == 0)
        // A server stopped with SIGTERM leaves no lock behind.
        let again = try Server(repo: repo, snapshot: snapshot, directory: dir.path)
        #expect(again.stop() == 0)
        #expect(try Tessera.ok(["unlock", "--repo", repo, "--remove-all"]).stdout.contains("no lock to remove"))
        try Tessera.ok(["prune", "--repo", repo])
        #expect(try Tessera.restore(repo: repo, snapshot: snapshot, scratch: dir.path) == disk)
    }

    @Test(.enabled(if: ExternalTool.available("qemu-io")))
    func aDamagedChunkIsAnIOErrorForItsBytesOnly() throws {
        let dir = try TemporaryDirectory("serve-damage")
        let repo = dir.file("repo"), source = dir.file("disk.raw")
        try Tessera.ok(["init", "--repo", repo])
        let disk = try makeDisk(at: source, chunks: 8, seed: 43)
        let snapshot = try Tessera.backup(repo: repo, source: source)
        try damageChunk(2, of: disk, in: repo)
        let server = try Server(repo: repo, snapshot: snapshot, directory: dir.path)
        let bad = try runCommand("qemu-io", ["-r", "-f", "raw", "-c", "read 131072 4096", server.uri])
        #expect((bad.stdout + bad.stderr).contains("Input/output error"), "a damaged chunk was served: \(bad.stdout)\(bad.stderr)")
        let good = try runCommand("qemu-io", ["-r", "-f", "raw", "-c", "read -P 0 196608 65536", "-c", "read 0 131072", server.uri])
        #expect(good.succeeded && !(good.stdout + good.stderr).contains("error"), "\(good.stdout)\(good.stderr)")
        server.stop()
    }
}
