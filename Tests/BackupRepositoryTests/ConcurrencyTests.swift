@testable import BackupRepository
import Foundation
import Synchronization
import Testing
import TestSupport

/// Runs `make-fixtures stress-writer` (the hidden helper mode) as a child process.
func startStressWriter(repo: String, seed: UInt64, rounds: Int?) throws -> Process {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: BuiltProducts.executable("make-fixtures"))
    p.arguments = ["stress-writer", repo, String(seed)] + (rounds.map { [String($0)] } ?? [])
    p.standardOutput = FileHandle.nullDevice
    try p.run()
    return p
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
                    var disk = TestDisk.random(seed: 1000 + UInt64(round), size: 4096 * 32, chunkSize: 4096, zeroShare: 10)
                    for i in stride(from: w, to: 32, by: 2) { disk.scribble(chunk: i, seed: UInt64(w * 100 + round * 7 + i)) }
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
        a.waitUntilExit()
        b.waitUntilExit()
        #expect(a.terminationStatus == 0 && b.terminationStatus == 0)
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
            kill(child.processIdentifier, SIGKILL)
            child.waitUntilExit()
            #expect(child.terminationReason == .uncaughtSignal)
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
        last.waitUntilExit()
        #expect(last.terminationStatus == 0)
        #expect(try verifyAllSnapshots(at: dir.path) == before + 2)
    }
}
