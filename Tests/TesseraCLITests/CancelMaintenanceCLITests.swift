import BlockIO
import Foundation
import Testing
import TestSupport

/// Ctrl-C (SIGINT) during `check --read-data` and `prune`: the job stops at its next clean
/// point (for prune: never between writing the new index and deleting the old, see
/// `Pruner.execute`), the lock and every temp file are removed, the command says so and
/// exits 130, and the repository checks clean afterwards.
struct CancelMaintenanceCLITests {
    /// Runs `arguments`, waits until `started` says the job is under way, sends SIGINT.
    static func interrupted(_ arguments: [String], started: () -> Bool,
                            sourceLocation: SourceLocation = #_sourceLocation) throws -> CommandResult {
        let command = try ChildProcess(tessera: arguments)
        var underWay = false
        while command.isRunning && !underWay { underWay = started(); usleep(500) }
        command.signal(SIGINT)
        let (r, timedOut) = command.wait(timeout: 120)
        try #require(underWay, "\(arguments[0]) ended before it was under way (make the repository larger): \(r.stdout) \(r.stderr)",
                     sourceLocation: sourceLocation)
        #expect(!timedOut, "\(arguments[0]) did not stop after SIGINT", sourceLocation: sourceLocation)
        return r
    }

    /// A repository with two snapshots of a 320 MiB random disk, the second with every other
    /// 64 KiB chunk rewritten: forget the first and half of each of its packs is garbage, so
    /// prune rewrites them all.
    static func makeRepository(_ dir: TemporaryDirectory) throws -> (repo: String, disk: String, first: String) {
        let disk = dir.file("disk.raw"), repo = dir.file("repo")
        try makeRandomFile(at: disk, mebibytes: 320)
        try Tessera.ok(["init", "--repo", repo])
        let first = try Tessera.backup(repo: repo, source: disk)
        let f = try BlockFile(path: disk, mode: .readWrite)
        var rng = SeededGenerator(seed: 77)
        for chunk in stride(from: 0, to: 320 * 16, by: 2) { try f.write(rng.bytes(65536), at: UInt64(chunk) * 65536) }
        _ = try Tessera.backup(repo: repo, source: disk)
        return (repo, disk, first)
    }

    @Test func sigintDuringCheckReadDataExits130LeavesNoLockAndChangesNothing() throws {
        let dir = try TemporaryDirectory("cancel-check")
        let (repo, _, _) = try Self.makeRepository(dir)
        let before = filesUnder(repo)
        // Under way once it holds its lock (the signal handlers are set before it is taken).
        let r = try Self.interrupted(["check", "--repo", repo, "--read-data", "--json"]) { !names(in: repo + "/locks").isEmpty }
        #expect(r.status == 130, "exit \(r.status): \(r.stderr) \(r.stdout)")
        #expect(r.stderr.contains("check cancelled by SIGINT; nothing was changed"), "\(r.stderr)")
        #expect(Tessera.lines(r).contains { $0["type"] as? String == "error" && $0["exit_code"] as? Int == 130 }, "\(r.stdout)")
        #expect(locksAndTempFiles(repo).isEmpty, "left behind: \(locksAndTempFiles(repo))")
        #expect(filesUnder(repo) == before)
        let check = try Tessera.run(["check", "--repo", repo, "--read-data"])
        #expect(check.status == 0, "\(check.stdout) \(check.stderr)")
    }

    @Test func sigintDuringPruneStopsAtASafePointAndARerunFinishes() throws {
        let dir = try TemporaryDirectory("cancel-prune")
        let (repo, disk, first) = try Self.makeRepository(dir)
        try Tessera.ok(["forget", "--repo", repo, "--keep-last", "1"])
        #expect(try Tessera.snapshotIDs(repo: repo).count == 1 && !(try Tessera.snapshotIDs(repo: repo).contains(first)))
        // Under way once it writes a new pack (step 2: copying live chunks out of half-garbage packs).
        let r = try Self.interrupted(["prune", "--repo", repo]) {
            filesUnder(repo + "/packs").contains { $0.contains("stream.tmp-") }
        }
        #expect(r.status == 130, "exit \(r.status): \(r.stderr) \(r.stdout)")
        #expect(r.stderr.contains("prune cancelled by SIGINT; the repository is consistent, run prune again to finish"), "\(r.stderr)")
        #expect(locksAndTempFiles(repo).isEmpty, "left behind: \(locksAndTempFiles(repo))")
        let check = try Tessera.run(["check", "--repo", repo, "--read-data"])
        #expect(check.status == 0, "after the cancelled prune: \(check.stdout) \(check.stderr)")

        // A rerun finishes: the packs are rewritten, the snapshot restores byte-identical.
        let rerun = try Tessera.summary(try Tessera.ok(["prune", "--repo", repo, "--json"]))
        #expect((rerun["packs_repacked"] as? Int ?? 0) > 0, "\(rerun)")
        let kept = try #require(try Tessera.snapshotIDs(repo: repo).first)
        #expect(try Tessera.restore(repo: repo, snapshot: kept, scratch: dir.path) == (try Data(contentsOf: URL(fileURLWithPath: disk))))
        let after = try Tessera.run(["check", "--repo", repo, "--read-data"])
        #expect(after.status == 0, "\(after.stdout) \(after.stderr)")
        #expect(locksAndTempFiles(repo).isEmpty)
    }
}

/// Every file under `root`, relative and sorted.
private func filesUnder(_ root: String) -> [String] {
    let e = FileManager.default.enumerator(atPath: root)
    var out: [String] = []
    while let p = e?.nextObject() as? String {
        var isDir: ObjCBool = false
        if FileManager.default.fileExists(atPath: "\(root)/\(p)", isDirectory: &isDir), !isDir.boolValue { out.append(p) }
    }
    return out.sorted()
}
