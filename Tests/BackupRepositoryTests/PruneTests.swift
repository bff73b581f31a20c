@testable import BackupRepository
import BlockIO
import Codecs
import Foundation
import Synchronization
import Testing
import TestSupport

/// Prune: after forget + prune every remaining snapshot restores byte-identical, check is
/// clean and space was freed; a fault at any write step leaves a repository that a rerun
/// finishes; prune refuses when it cannot tell what is live. Every test runs on every store.
struct PruneTests {
    /// Eight nightly snapshots of one evolving disk in small packs, plus the garbage of a
    /// killed backup (packs no index names) and, on disk, a pack stream a killed backup left
    /// half written and a leftover temp file (a store of whole objects has no leftovers).
    static func makeRepository(_ kind: StoreKind, _ label: String) throws -> (TestRepository, [SnapshotRecord]) {
        let (t, repo) = try kind.makeRepository(label)
        var disk = DiskModel.mixed(size: 4096 * 48, seed: 71, blockSize: 4096, zeroShare: 10)
        var records: [SnapshotRecord] = []
        for night in 0..<8 {
            for k in 0..<6 { disk.scribble(block: (night * 7 + k * 5) % disk.blockCount, seed: UInt64(night * 100 + k)) }
            records.append(try backup(disk, into: repo, packTargetSize: 24 << 10, time: Date(timeIntervalSince1970: 1_700_000_000 + Double(night) * 86400)))
        }
        // A killed backup: packs written, never indexed, no snapshot.
        let writer = try repo.makeWriter(packTargetSize: 8 << 10)
        var g = SeededGenerator(seed: 99)
        for _ in 0..<7 {
            let c = g.bytes(4096)
            _ = try c.withUnsafeBytes { try writer.store(chunk: $0, id: XXH3.hash128($0)) }
        }
        writer.abandon() // removes its open pack's stream (the 7th chunk)
        // A backup killed while a pack was filling: the pack's stream is a temp file.
        let killed = try repo.makeWriter()
        let c = g.bytes(4096)
        _ = try c.withUnsafeBytes { try killed.store(chunk: $0, id: XXH3.hash128($0)) }
        if let store = t.store as? LocalObjectStore {
            #expect(try store.leftovers().filter { $0.hasPrefix("packs/stream.tmp-") }.count == 1)
            let pack = try #require(try store.list(.pack).first)
            try Data([1, 2, 3]).write(to: URL(fileURLWithPath: store.path(of: pack) + ".tmp-999999-1"))
        }
        return (t, records)
    }

    @Test(arguments: StoreKind.allCases)
    func forgetThenPruneFreesSpaceAndEveryRemainingSnapshotRestores(_ kind: StoreKind) throws {
        let (t, records) = try Self.makeRepository(kind, "prune")
        let repo = try t.open()
        let before = try RepositoryChecker.check(repo, options: CheckOptions(readData: .all))
        #expect(before.isClean && before.summary.unindexedPacks > 0)

        let decisions = try Retention.forget(RetentionPolicy(keepLast: 3), in: repo)
        #expect(decisions.filter(\.keep).map(\.snapshot.id) == records.suffix(3).reversed().map(\.id))
        let report = try Pruner.prune(repo)
        #expect(report.bytesFreed > 0 && report.packsDeleted > 0 && report.diskMapsDeleted == 5)
        #expect(report.leftoversDeleted == (kind == .local ? 2 : 0))
        #expect(try t.verifyAllSnapshots() == 3)
        let after = try t.check(.all)
        #expect(after.isClean, "\(after.findings)")
        #expect(after.summary.unreferencedPacks == 0 && after.summary.unreferencedDiskMaps == 0 && after.summary.unreferencedMapPages == 0)
        #expect(after.summary.unindexedPacks == 0 && after.summary.indexFiles == 1)
        #expect(try t.store.leftovers().isEmpty)

        // A second prune finds nothing to do.
        let again = try Pruner.prune(try t.open())
        #expect(again.packsDeleted == 0 && again.packsRepacked == 0 && again.bytesFreed == 0)
    }

    @Test(arguments: StoreKind.allCases)
    func aDryRunChangesNothing(_ kind: StoreKind) throws {
        let (t, _) = try Self.makeRepository(kind, "prune")
        let repo = try t.open()
        _ = try Retention.forget(RetentionPolicy(keepLast: 2), in: repo)
        let contents = try t.contents()
        let plan = try Pruner.prune(repo, options: PruneOptions(dryRun: true))
        #expect(plan.packsDeleted + plan.packsRepacked > 0)
        #expect(try t.contents() == contents)
    }

    /// Every write step of a prune fails in turn (as a crash there would stop it); a rerun
    /// then finishes, and every snapshot still restores. (The steps are a local store's own,
    /// fsyncs and renames included, or `FaultingStore`'s around each write on other stores.)
    @Test(arguments: StoreKind.allCases)
    func aPruneStoppedAtAnyWriteStepIsFinishedByARerun(_ kind: StoreKind) throws {
        let (base, records) = try Self.makeRepository(kind, "prune-base")
        _ = try Retention.forget(RetentionPolicy(keepLast: 4), in: try base.open())
        // Count the steps.
        let counting = FaultPlan(failAt: nil)
        let probe = try base.copy("prune-probe")
        _ = try Pruner.prune(try probe.openFaulty(counting))
        withExtendedLifetime(probe) {}
        let steps = counting.points.count
        #expect(steps > 5)
        for n in 0..<steps {
            let t = try base.copy("prune-fault")
            let plan = FaultPlan(failAt: n)
            #expect(throws: (any Error).self) { _ = try Pruner.prune(try t.openFaulty(plan)) }
            #expect(try t.verifyAllSnapshots() == 4, "after a fault at step \(n) \(plan.points.last.map { "\($0)" } ?? "")")
            _ = try Pruner.prune(try t.open())
            #expect(try t.verifyAllSnapshots() == 4)
            #expect(try t.check(.all).isClean)
        }
        #expect(records.count == 8)
    }

    /// On a full disk only deleting makes room, so prune deletes the wholly unreferenced
    /// packs before it writes any new pack; and the crash-safety order stays: a pack is
    /// deleted only when no index file names it any more, durably.
    @Test(arguments: StoreKind.allCases)
    func pruneDeletesUnreferencedPacksBeforeRepackingAndNeverAheadOfTheIndex(_ kind: StoreKind) throws {
        let (t, _) = try Self.makeRepository(kind, "prune-order")
        _ = try Retention.forget(RetentionPolicy(keepLast: 3), in: try t.open())
        let store = OrderCheckingStore(base: t.store)
        let report = try Pruner.prune(try Repository.open(store: store))
        try #require(report.packsDeleted > 0 && report.packsRepacked > 0, "this repository must need both: \(report)")
        #expect(store.violations.isEmpty, "\(store.violations)")
        let events = store.events
        let firstNewPack = try #require(events.firstIndex(of: "begin pack"), "no pack was written: \(events)")
        #expect(events[..<firstNewPack].filter { $0.hasPrefix("delete pack") }.count == report.packsDeleted,
                "wholly unreferenced packs must be gone before repacking starts: \(events)")
        #expect(try t.verifyAllSnapshots() == 3)
        #expect(try t.check(.all).isClean)
    }

    /// The plan is a pure function of the inventory: what goes, what is rewritten into which
    /// packs, what the index files and the bytes become; no repository needed.
    /// A pack whose every chunk is live is never "garbage", however small: its header and
    /// trailer are not waste (they were counted as such, and each nightly prune rewrote the
    /// night's small packs, forever).
    @Test func aPackWithOnlyLiveChunksIsNeverRewrittenHoweverSmall() {
        func d(_ n: UInt64) -> Digest128 { Digest128(high: n, low: n) }
        var inventory = PruneInventory()
        let tiny = IndexEntry(chunk: d(1), pack: d(2), offset: 8, length: 68, rawLength: 65536)
        inventory.packs = [.init(id: d(2), size: PackFile.size(envelopeBytes: 68, count: 1), live: [tiny])]
        let plan = PrunePlan.make(inventory, options: PruneOptions())
        #expect(plan.packsToRepack.isEmpty && plan.kept == [tiny])
        // One dead 68-byte chunk beside it is real garbage (over the 20 % threshold): rewritten.
        inventory.packs = [.init(id: d(2), size: PackFile.size(envelopeBytes: 136, count: 2), live: [tiny])]
        #expect(PrunePlan.make(inventory, options: PruneOptions()).packsToRepack == [d(2)])
    }

    @Test func thePlanIsMadeFromTheInventoryAlone() throws {
        func d(_ n: UInt64) -> Digest128 { Digest128(high: n, low: n) }
        func entries(_ pack: UInt64, _ chunks: ClosedRange<UInt64>, length: Int = 1000) -> [IndexEntry] {
            chunks.enumerated().map { k, c in
                IndexEntry(chunk: d(c), pack: d(pack), offset: UInt64(8 + k * length), length: length, rawLength: 4096)
            }
        }
        var inventory = PruneInventory()
        inventory.packs = [
            .init(id: d(1), size: 10_000, live: []),                          // garbage: delete
            .init(id: d(2), size: 10_000, live: entries(2, 10...18)),         // 9 000 of 10 000 live: keep
            .init(id: d(3), size: 10_000, live: entries(3, 20...21)),         // 80 % garbage: rewrite
            .init(id: d(4), size: 10_000, live: entries(4, 30...38), hasSetAside: true), // rewrite, quarantine
            .init(id: d(5), size: 3_000, live: [], hasSetAside: true),        // quarantine
        ]
        inventory.indexFiles = [.init(key: ObjectKey(.index, d(9).hex), size: 5_000)]
        inventory.diskMaps = [.init(key: ObjectKey(.diskMap, d(7).hex), size: 300, live: false),
                              .init(key: ObjectKey(.diskMap, d(8).hex), size: 300)]
        var options = PruneOptions()
        options.packTargetSize = 6_000
        let plan = PrunePlan.make(inventory, options: options)
        #expect(plan.packsToDelete == [d(1), d(5)] && plan.packsToRepack == [d(3), d(4)])
        #expect(plan.quarantined == [d(4), d(5)])
        // 11 chunks of 1 000 bytes into packs sealed at 6 000 bytes: 6 (8 + 6 000), then 5.
        #expect(plan.newPacks.map(\.entries.count) == [6, 5])
        let sizes: [UInt64] = [8 + 6_000 + 32 + 6 * 32, 8 + 5_000 + 32 + 5 * 32]
        #expect(plan.newPacks.map(\.size) == sizes)
        #expect(plan.kept == entries(2, 10...18))
        let interim = try #require(plan.interimIndex)
        #expect(try IndexFile.decode(interim.bytes, name: interim.name) == plan.kept + entries(3, 20...21) + entries(4, 30...38))
        let r = plan.report
        #expect(r.packsDeleted == 1 && r.packsQuarantined == 2 && r.packsRepacked == 2 && r.packsKept == 1)
        #expect(r.packsWritten == 2 && r.chunksMoved == 11 && r.diskMapsDeleted == 1)
        // Interim index (old one deleted), then the final one (interim deleted).
        #expect(r.indexFilesWritten == 2 && r.indexFilesDeleted == 2)
        #expect(r.bytesBefore == UInt64(43_000 + 5_000 + 600))
        let newPackBytes: UInt64 = plan.newPacks.reduce(0) { $0 + $1.size }
        let indexBytes = UInt64(16 + 20 * 48 + 8)
        #expect(r.bytesAfter == 10_000 + newPackBytes + indexBytes + 300)
        // Nothing to delete: no interim index, one index file written.
        inventory.packs.removeAll { $0.live.isEmpty }
        let repackOnly = PrunePlan.make(inventory, options: options)
        #expect(repackOnly.interimIndex == nil && repackOnly.report.indexFilesWritten == 1 && repackOnly.report.indexFilesDeleted == 1)
    }

    @Test(arguments: StoreKind.allCases)
    func pruneRefusesWhenItCannotTellWhatIsLive(_ kind: StoreKind) throws {
        let (t, _) = try Self.makeRepository(kind, "prune")
        let index = try #require(try t.store.list(.index).first)
        try t.damage(index, .flipByte, at: 20)
        let contents = try t.contents()
        let e = #expect(throws: RepositoryError.self) { _ = try Pruner.prune(try t.open()) }
        #expect(e?.message.contains("repair index") == true)
        #expect(try t.contents() == contents)
        // Repaired, prune runs and everything restores.
        _ = try RepositoryRepair.rebuildIndex(try t.open())
        _ = try Pruner.prune(try t.open())
        #expect(try t.verifyAllSnapshots() == 8)
    }

    @Test(arguments: StoreKind.allCases)
    func packsWithSetAsideChunksGoToQuarantineOnceHealed(_ kind: StoreKind) throws {
        let (t, repo) = try kind.makeRepository("prune")
        let disk = DiskModel.mixed(size: 4096 * 16, seed: 72, blockSize: 4096, zeroShare: 0)
        _ = try backup(disk, into: repo)
        let victim = disk.block(3).withUnsafeBytes { XXH3.hash128($0) }
        let pack = try #require(repo.location(of: victim)).pack
        try repo.setChunkAside(victim, reason: "test")
        // Unhealed: prune refuses rather than lose track of the chunk.
        #expect(throws: RepositoryError.self) { _ = try Pruner.prune(try t.open()) }
        _ = try backup(disk, into: try t.open())
        let report = try Pruner.prune(try t.open())
        #expect(report.packsQuarantined == 1)
        #expect(!t.store.exists(ObjectKey(.pack, pack.hex)))
        if let path = t.path { #expect(FileManager.default.fileExists(atPath: "\(path)/quarantine/pack-\(pack.hex).0.bad")) }
        #expect(try t.verifyAllSnapshots() == 2)
        #expect(try t.check(.all).isClean)
    }

    @Test(arguments: StoreKind.allCases)
    func aLockHeldByABackupMakesPruneWaitThenFail(_ kind: StoreKind) throws {
        let (t, repo) = try kind.makeRepository("prune")
        defer { withExtendedLifetime(t) {} }
        let shared = try repo.lock(.shared)
        let e = #expect(throws: RepositoryError.self) { _ = try repo.lock(.exclusive, wait: 1) }
        #expect(e?.code == .locked)
        try shared.release()
        try repo.lock(.exclusive, wait: 1).release()
    }
}

/// A store that records a prune's operations and checks, at every pack deletion, that no
/// index file names the pack and that index deletions were made durable first.
final class OrderCheckingStore: ObjectStore {
    let base: any ObjectStore
    private let log = Mutex<[String]>([])
    private let problems = Mutex<[String]>([])
    private let unsyncedIndexChanges = Mutex<Bool>(false)

    init(base: any ObjectStore) { self.base = base }

    var events: [String] { log.withLock { $0 } }
    var violations: [String] { problems.withLock { $0 } }

    private func checkPackMayGo(_ key: ObjectKey) throws {
        guard key.kind == .pack else { return }
        for index in try base.list(.index) {
            let entries = try IndexFile.decode(try base.get(index), name: index.name)
            if entries.contains(where: { $0.pack.hex == key.name }) {
                problems.withLock { $0.append("pack \(key.name) deleted while index file \(index.name) names it") }
            }
        }
        if unsyncedIndexChanges.withLock({ $0 }) {
            problems.withLock { $0.append("pack \(key.name) deleted before the index changes were durable") }
        }
    }

    func put(_ key: ObjectKey, _ bytes: [UInt8], syncNow: Bool) throws {
        log.withLock { $0.append("put \(key.kind.rawValue) \(key.name)") }
        try base.put(key, bytes, syncNow: syncNow)
        if key.kind == .index && !syncNow { unsyncedIndexChanges.withLock { $0 = true } }
    }

    func syncPendingDirectories() throws {
        try base.syncPendingDirectories()
        unsyncedIndexChanges.withLock { $0 = false }
    }

    func delete(_ key: ObjectKey) throws {
        try checkPackMayGo(key)
        log.withLock { $0.append("delete \(key.kind.rawValue) \(key.name)") }
        try base.delete(key)
        if key.kind == .index { unsyncedIndexChanges.withLock { $0 = true } }
    }

    func quarantine(_ key: ObjectKey) throws -> String {
        try checkPackMayGo(key)
        log.withLock { $0.append("quarantine \(key.kind.rawValue) \(key.name)") }
        return try base.quarantine(key)
    }

    func beginObject(_ kind: ObjectKind) throws -> any ObjectStream {
        log.withLock { $0.append("begin \(kind.rawValue)") }
        return try base.beginObject(kind)
    }

    func get(_ key: ObjectKey) throws -> [UInt8] { try base.get(key) }
    func get(_ key: ObjectKey, range: ByteRange) throws -> [UInt8] { try base.get(key, range: range) }
    func size(_ key: ObjectKey) throws -> UInt64 { try base.size(key) }
    func exists(_ key: ObjectKey) -> Bool { base.exists(key) }
    func list(_ kind: ObjectKind, prefix: String) throws -> [ObjectKey] { try base.list(kind, prefix: prefix) }
    func leftovers() throws -> [String] { try base.leftovers() }
    func removeLeftover(_ name: String) throws { try base.removeLeftover(name) }
}
