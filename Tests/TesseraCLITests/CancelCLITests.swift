import Foundation
import Testing
import TestSupport

/// Ctrl-C (SIGINT) while a backup reads: the pipeline stops, the filter's checkpoint is
/// aborted (nothing lost), temp packs and the lock are removed, the command says so and
/// exits 130; the next backup succeeds and restores byte-identical.
struct CancelCLITests {
    /// Starts a backup, waits until it is under way (its progress shows it reading, or
    /// `started` says so), sends SIGINT.
    static func interruptedBackup(_ arguments: [String], started: (() -> Bool)? = nil,
                                  sourceLocation: SourceLocation = #_sourceLocation) throws -> CommandResult {
        let backup = try ChildProcess(tessera: arguments + ["--json"])
        let reading = started?() ?? backup.waitForLine(timeout: 120, isWorkingProgressLine)
        backup.signal(SIGINT)
        let (r, timedOut) = backup.wait(timeout: 120)
        try #require(reading, "the backup ended before it showed progress (make the disk larger): \(r.stdout) \(r.stderr)",
                     sourceLocation: sourceLocation)
        #expect(!timedOut, "the backup did not stop after SIGINT", sourceLocation: sourceLocation)
        return r
    }

    @Test(.enabled(if: ExternalTool.available("qemu-io")))
    func sigintDuringAFilterBackupAbortsTheCheckpointAndLosesNothing() throws {
        let dir = try TemporaryDirectory("cancel-filter")
        let disk = dir.file("disk.raw"), repo = dir.file("repo")
        try makeRandomFile(at: disk, mebibytes: 384)
        let filter = try FilterProcess.started(directory: dir, diskName: "d", diskPath: disk)
        defer { filter.stop() }
        try Tessera.ok(["init", "--repo", repo])
        try Tessera.ok(["backup", "--repo", repo, "--disk", "d", "--filter", filter.controlPath])
        // Changes in the epoch the cancelled backup will freeze, and after it.
        try filter.write([(offset: 1 << 20, length: 65536, value: 0x11), (offset: 300 << 20, length: 4096, value: 0x12)])

        // Under way once its checkpoint is open, as the filter's log says (reading
        // deduplicated chunks is too quick to wait for a progress line).
        let checkpoints = { (log: [String]) in log.filter { $0.contains("disk d: checkpoint ") && !$0.contains("released") }.count }
        let before = checkpoints(filter.logLines)
        let r = try Self.interruptedBackup(["backup", "--repo", repo, "--disk", "d", "--filter", filter.controlPath, "--full"], started: {
            filter.waitForLogLines(timeout: 120) { checkpoints($0) > before }
        })
        #expect(r.status == 130, "exit \(r.status): \(r.stderr)")
        #expect(r.stderr.contains("backup of disk d cancelled by SIGINT; checkpoint aborted, nothing lost; no snapshot saved"), "\(r.stderr)")
        let status = try Tessera.ok(["filter", "status", "--control", filter.controlPath, "--json"])
        #expect(!status.stdout.contains("\"checkpoint\":{"), "the checkpoint is still open: \(status.stdout)")
        #expect(locksAndTempFiles(repo).isEmpty, "left behind: \(locksAndTempFiles(repo))")
        #expect(try Tessera.snapshotIDs(repo: repo).count == 1)

        try filter.write([(offset: 350 << 20, length: 65536, value: 0x13)])
        let next = try Tessera.summary(try Tessera.ok(["backup", "--repo", repo, "--disk", "d", "--filter", filter.controlPath, "--json"]))
        #expect(next["mode"] as? String == "cbt", "\(next)")
        #expect(next["bytes_read"] as? Int == 3 * 65536, "the incremental must read the aborted epoch's changes and the new one: \(next)")
        let restored = try Tessera.restore(repo: repo, snapshot: try #require(next["snapshot"] as? String), scratch: dir.path)
        #expect(restored == (try Data(contentsOf: URL(fileURLWithPath: disk))), "the restore differs from the disk")
    }

    @Test func sigintDuringAScanBackupLeavesNoLockNoTempPackAndNoSnapshot() throws {
        let dir = try TemporaryDirectory("cancel-scan")
        let disk = dir.file("disk.raw"), repo = dir.file("repo")
        try makeRandomFile(at: disk, mebibytes: 384)
        try Tessera.ok(["init", "--repo", repo])
        let r = try Self.interruptedBackup(["backup", "--repo", repo, "--disk", "d", "--source", disk])
        #expect(r.status == 130, "exit \(r.status): \(r.stderr) \(r.stdout)")
        #expect(r.stderr.contains("backup of disk d cancelled by SIGINT; no snapshot saved"), "\(r.stderr)")
        #expect(Tessera.lines(r).contains { $0["type"] as? String == "error" && $0["exit_code"] as? Int == 130 }, "\(r.stdout)")
        #expect(locksAndTempFiles(repo).isEmpty, "left behind: \(locksAndTempFiles(repo))")
        #expect(try Tessera.snapshotIDs(repo: repo).isEmpty)

        let id = try Tessera.backup(repo: repo, source: disk)
        #expect(try Tessera.restore(repo: repo, snapshot: id, scratch: dir.path) == (try Data(contentsOf: URL(fileURLWithPath: disk))))
        let check = try Tessera.run(["check", "--repo", repo])
        #expect(check.status == 0, "\(check.stdout) \(check.stderr)")
    }
}
