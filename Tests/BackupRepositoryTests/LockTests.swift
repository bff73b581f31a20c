@testable import BackupRepository
import Foundation
import Testing
import TestSupport

struct LockTests {
    @Test(arguments: StoreKind.allCases)
    func sharedLocksCoexistAndExclusiveIsRefusedWithTheLockedCode(_ kind: StoreKind) throws {
        let (t, repo) = try kind.makeRepository("lock", chunkSize: 4096)
        let a = try repo.lock(.shared)
        let b = try repo.lock(.shared)
        let e = #expect(throws: RepositoryError.self) { _ = try repo.lock(.exclusive) }
        #expect(e?.code == .locked)
        #expect(e?.message.contains("pid \(getpid())") == true)
        try a.release()
        #expect((#expect(throws: RepositoryError.self) { _ = try repo.lock(.exclusive) })?.code == .locked)
        try b.release()
        // The refused attempts left no lock files behind.
        #expect(try repo.locks().isEmpty)
        let x = try repo.lock(.exclusive)
        #expect((#expect(throws: RepositoryError.self) { _ = try repo.lock(.shared) })?.code == .locked)
        #expect((#expect(throws: RepositoryError.self) { _ = try t.open().lock(.exclusive) })?.code == .locked)
        try x.refresh()
        #expect(try repo.locks().count == 1)
        try x.release()
        try repo.lock(.shared).release()
    }

    /// A pid that certainly belonged to a process that has exited.
    func deadPID() throws -> Int32 {
        let p = try ChildProcess("/bin/true", [])
        _ = p.wait()
        return p.pid
    }

    func plant(_ info: LockInfo, in repo: Repository) throws {
        try repo.store.put(ObjectKey(.lock, info.id), Array(JSONEnvelope.encoder().encode(info)), syncNow: true)
    }

    @Test(arguments: StoreKind.allCases)
    func aLockOfADeadProcessIsStaleIgnoredAndRemovable(_ kind: StoreKind) throws {
        let (t, repo) = try kind.makeRepository("lock", chunkSize: 4096)
        defer { withExtendedLifetime(t) {} }
        let now = Date()
        let dead = LockInfo(id: "dead0000000000000000000000000001", kind: .exclusive, host: currentHostName(),
                            pid: try deadPID(), started: now, refreshed: now)
        let old = LockInfo(id: "01d00000000000000000000000000002", kind: .exclusive, host: "another-host",
                           pid: 1, started: now.addingTimeInterval(-7200), refreshed: now.addingTimeInterval(-3600))
        let live = LockInfo(id: "11fe000000000000000000000000003", kind: .shared, host: "another-host",
                            pid: 1, started: now, refreshed: now)
        #expect(dead.isStale(now: now))
        #expect(old.isStale(now: now))
        #expect(!live.isStale(now: now))
        try plant(dead, in: repo)
        try plant(old, in: repo)
        // Stale exclusive locks do not block.
        let shared = try repo.lock(.shared)
        try shared.release()
        try plant(live, in: repo)
        // A live lock on another host blocks an exclusive lock.
        #expect((#expect(throws: RepositoryError.self) { _ = try repo.lock(.exclusive) })?.code == .locked)
        let removed = try repo.removeStaleLocks()
        #expect(Set(removed.map(\.id)) == [dead.id, old.id])
        #expect(try repo.locks().map(\.id) == [live.id])
    }
}
