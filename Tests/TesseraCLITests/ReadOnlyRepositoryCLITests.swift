import Foundation
import Testing
import TestSupport

/// Disaster recovery from a repository that cannot be written (a write-protected USB disk,
/// a snapshot of the backup volume): restore, serve, diff and check run without a lock,
/// with a warning; `--no-lock` skips the lock on purpose.
struct ReadOnlyRepositoryCLITests {
    /// A repository with two snapshots of one disk; returns the second disk's bytes.
    static func twoSnapshots(repo: String, source: String) throws -> (String, String, Data) {
        try Tessera.ok(["init", "--repo", repo])
        var disk = try makeDisk(at: source, chunks: 12, seed: 81)
        let a = try Tessera.backup(repo: repo, source: source)
        disk.replaceSubrange(65536..<65536 * 2, with: Data(repeating: 7, count: 65536))
        try disk.write(to: URL(fileURLWithPath: source))
        let b = try Tessera.backup(repo: repo, source: source)
        return (a, b, disk)
    }

    /// The read-only commands against `repo`; each must succeed. Returns their stderr.
    static func readOnlyCommands(repo: String, a: String, b: String, disk: Data, scratch: String, extra: [String] = [],
                                 sourceLocation: SourceLocation = #_sourceLocation) throws -> [String: String] {
        var stderr: [String: String] = [:]
        let out = "\(scratch)/restored-\(UInt32.random(in: 0...UInt32.max)).raw"
        let restore = try Tessera.run(["restore", "--repo", repo, b, "--to", out] + extra)
        #expect(restore.status == 0, "restore: \(restore.stderr)", sourceLocation: sourceLocation)
        if restore.status == 0 {
            #expect(try Data(contentsOf: URL(fileURLWithPath: out)) == disk, sourceLocation: sourceLocation)
        }
        stderr["restore"] = restore.stderr
        let diff = try Tessera.run(["diff", "--repo", repo, a, b] + extra)
        #expect(diff.status == 0 && diff.stdout.contains("65536\t65536"), "diff: \(diff.stdout) \(diff.stderr)", sourceLocation: sourceLocation)
        stderr["diff"] = diff.stderr
        let check = try Tessera.run(["check", "--repo", repo, "--read-data"] + extra)
        #expect(check.status == 0 && check.stdout.contains("no damage found"), "check: \(check.stdout) \(check.stderr)", sourceLocation: sourceLocation)
        stderr["check"] = check.stderr
        let socket = "\(scratch)/serve-\(UInt32.random(in: 0...UInt32.max)).sock"
        let serve = try ChildProcess(tessera: ["serve", "--repo", repo, b, "--socket", socket] + extra)
        let serving = serve.waitForLine(timeout: 60) { $0.hasPrefix("serving snapshot") }
        serve.signal(SIGTERM)
        let (served, _) = serve.wait(timeout: 60)
        #expect(serving && served.status == 0, "serve: \(served.stdout) \(served.stderr)", sourceLocation: sourceLocation)
        stderr["serve"] = served.stderr
        return stderr
    }

    @Test func readOnlyCommandsWorkOnAReadOnlyMount() throws {
        let dir = try TemporaryDirectory("ro-mount")
        let repo = dir.file("repo"), ro = dir.file("ro")
        let (a, b, disk) = try Self.twoSnapshots(repo: repo, source: dir.file("disk.raw"))
        try FileManager.default.createDirectory(atPath: ro, withIntermediateDirectories: true)
        let bound = try runCommand("mount", ["--bind", repo, ro])
        try #require(bound.succeeded, "cannot bind-mount (needs root): \(bound.stderr)")
        defer { _ = try? runCommand("umount", [ro]) }
        let remounted = try runCommand("mount", ["-o", "remount,bind,ro", ro])
        try #require(remounted.succeeded, "cannot remount read-only: \(remounted.stderr)")
        #expect(!FileManager.default.createFile(atPath: "\(ro)/locks/probe", contents: Data()), "the mount is not read-only")

        let stderr = try Self.readOnlyCommands(repo: ro, a: a, b: b, disk: disk, scratch: dir.path)
        for (command, text) in stderr {
            #expect(text.contains("warning") && text.contains("read-only") && text.contains("without a lock"),
                    "\(command) on a read-only repository must say it runs without a lock: \(text)")
        }
        // Asked for explicitly: no warning needed.
        let quiet = try Self.readOnlyCommands(repo: ro, a: a, b: b, disk: disk, scratch: dir.path, extra: ["--no-lock"])
        for (command, text) in quiet { #expect(!text.contains("warning"), "\(command) --no-lock: \(text)") }
    }

    /// `--no-lock` takes no lock and ignores the locks others hold (restic's meaning): it
    /// reads beside a prune at the operator's risk, and writes nothing into the repository.
    @Test func noLockTakesNoLockAndIgnoresOthers() throws {
        let dir = try TemporaryDirectory("no-lock")
        let repo = dir.file("repo")
        let (a, b, disk) = try Self.twoSnapshots(repo: repo, source: dir.file("disk.raw"))
        // An exclusive lock held by a live process on this host (this test): a prune, say.
        var buffer = [CChar](repeating: 0, count: 256)
        gethostname(&buffer, 255)
        let host = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        let now = Date().formatted(Date.ISO8601FormatStyle(includingFractionalSeconds: true))
        let id = String(repeating: "e", count: 32)
        let lock = """
            {"id":"\(id)","kind":"exclusive","host":"\(host)","pid":\(getpid()),"started":"\(now)","refreshed":"\(now)"}
            """
        try Data(lock.utf8).write(to: URL(fileURLWithPath: "\(repo)/locks/\(id).lock"))
        let locked = try Tessera.run(["restore", "--repo", repo, b, "--to", dir.file("locked.raw")])
        #expect(locked.status == 11, "the stand-in lock is not honoured without --no-lock: \(locked.stderr)")

        _ = try Self.readOnlyCommands(repo: repo, a: a, b: b, disk: disk, scratch: dir.path, extra: ["--no-lock"])
        #expect(names(in: "\(repo)/locks") == ["\(id).lock"], "--no-lock wrote a lock file")
    }
}
