@testable import BackupRepository
import Foundation
import Synchronization
import Testing
import TestSupport

/// Runs `make-fixtures stress-writer` (the hidden helper mode) as a child process.
func startStressWriter(repo: String, seed: UInt64, rounds: Int?) throws -> ChildProcess {
    try ChildProcess(BuiltProducts.executable("make-fixtures"), ["stress-writer", repo, String(seed)] + (rounds.map { [String($0)] } ?? []))
}

struct ConcurrencyTests {
    @Test(arguments: StoreKind.allCases)
    func twoWritersInOneProcessCommitCompleteSnapshots(_ kind: StoreKind) throws {
        let (t, _) = try kind.makeRepository("conc")
        let failures = Mutex<[String]>([])
        // Separate Repository objects: separate in-memory indexes, as in two processes.
        DispatchQueue.concurrentPerform(iterations: 2) { w in
            do {
                let repo = try t.open()
                for round in 0..<6 {
                    let lock = try repo.lock(.shared)
                    // Half of each disk is shared between the writers: both may store those chunks.
                    var disk = DiskModel.mixed(size: 4096 * 32, seed: 1000 + UInt64(round), blockSize: 4096, zeroShare: 10)
                    for i in stride(from: w, to: 32, by: 2) { disk.scribble(block: i, seed: UInt64(w * 100 + round * 7 + i)) }
                    try backup(disk, into: repo, name: "disk\(w)", packTargetSize: 24 << 10)
                    try lock.release()
                }
            } catch {
                failures.withLock { $0.append("\(error)") }
            }
        }
        #expect(failures.withLock { $0 } == [])
        #expect(try t.verifyAllSnapshots() == 12)
    }

    @Test func twoWriterProcessesCommitCompleteSnapshots() throws {
        let dir = try TemporaryDirectory("conc")
        _ = try Repository.initialize(at: dir.path, chunkSize: 4096)
        let a = try startStressWriter(repo: dir.path, seed: 1, rounds: 4)
        let b = try startStressWriter(repo: dir.path, seed: 2, rounds: 4)
        let (ra, rb) = (a.wait().result, b.wait().result)
        #expect(ra.status == 0 && rb.status == 0, "\(ra.stderr) \(rb.stderr)")
        #expect(try verifyAllSnapshots(at: dir.path) == 8)
        #expect(try Repository.open(at: dir.path).locks().isEmpty)
    }
}

/// A real kill: a child backs up in a loop and is SIGKILLed at random instants; the
/// repository then opens, every committed snapshot restores whole, and backups go on.
struct CrashTests {
    @Test func sigkillAtRandomInstantsNeverBreaksCommittedSnapshots() throws {
        let dir = try TemporaryDirectory("crash")
        _ = try Repository.initialize(at: dir.path, chunkSize: 4096)
        var g = SeededGenerator(seed: 31)
        let kills = ProcessInfo.processInfo.environment["TESSERA_LONG"] == "1" ? 40 : 6
        for k in 0..<kills {
            let child = try startStressWriter(repo: dir.path, seed: 100 + UInt64(k), rounds: nil)
            usleep(UInt32(50_000 + g.next() % 400_000))
            let killed = child.kill()
            #expect(killed.status == 128 + SIGKILL, "the stress writer ended on its own: \(killed.status) \(killed.stderr)")
            try verifyAllSnapshots(at: dir.path)
        }
        // The killed children left their shared locks behind: stale (dead pids), so removable.
        let repo = try Repository.open(at: dir.path)
        let stale = try repo.removeStaleLocks()
        #expect(try repo.locks().isEmpty)
        #expect(stale.count <= kills)
        // Backups go on: two more complete rounds, and everything still restores.
        let before = try repo.snapshotIDs().count
        let last = try startStressWriter(repo: dir.path, seed: 999, rounds: 2)
        let finished = last.wait().result
        #expect(finished.status == 0, "\(finished.stderr)")
        #expect(try verifyAllSnapshots(at: dir.path) == before + 2)
    }
}
