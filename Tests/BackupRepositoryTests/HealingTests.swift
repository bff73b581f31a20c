@testable import BackupRepository
import Codecs
import Foundation
import Testing
import TestSupport

/// The hooks the later check/repair/prune work builds on: set a damaged chunk aside so the
/// next backup heals it, rebuild a lost index from the packs alone, list every object.
struct HealingTests {
    @Test(arguments: StoreKind.allCases)
    func aChunkSetAsideIsStoredAgainByTheNextBackupWhichHealsOldSnapshots(_ kind: StoreKind) throws {
        let (t, repo) = try kind.makeRepository("heal")
        let disk = DiskModel.mixed(size: 4096 * 16, seed: 41, blockSize: 4096, zeroShare: 0)
        let old = try backup(disk, into: repo)
        // Damage one chunk's payload inside its pack.
        let victim = disk.block(5).withUnsafeBytes { XXH3.hash128($0) }
        let loc = try #require(repo.location(of: victim))
        try t.change(ObjectKey(.pack, loc.pack.hex)) { $0[Int(loc.offset) + ObjectEnvelope.headerSize + 7] ^= 1 }
        #expect((#expect(throws: RepositoryError.self) { _ = try restore(old, from: repo) })?.object == "pack \(loc.pack)")

        #expect(try repo.setChunkAside(victim, reason: "test: flipped bit") == loc.pack)
        #expect(!repo.contains(victim))
        #expect(!(try t.open()).contains(victim))
        // The next backup of the same disk stores exactly that chunk again...
        let next = try backup(disk, into: try t.open())
        #expect(next.stats.chunksNew == 1)
        // ...and the old snapshot restores whole again.
        let reopened = try t.open()
        #expect(try restore(old, from: reopened) == disk.bytes)
        #expect(reopened.location(of: victim)?.pack != loc.pack)
        #expect(try reopened.store.list(.setAside).count == 1)
    }

    @Test(arguments: StoreKind.allCases)
    func lostIndexFilesAreRebuiltFromThePacksAlone(_ kind: StoreKind) throws {
        let (t, repo) = try kind.makeRepository("heal")
        let disk = DiskModel.mixed(size: 4096 * 64, seed: 42, blockSize: 4096, zeroShare: 10)
        let record = try backup(disk, into: repo, packTargetSize: 40 << 10)
        let store = t.store
        for key in try store.list(.index) { try store.delete(key) }
        let blind = try t.open()
        #expect(throws: RepositoryError.self) { _ = try restore(record, from: blind) }
        // Every pack describes itself: walk them, write one new index.
        var entries: [IndexEntry] = []
        for key in try store.list(.pack) {
            let pack = try #require(Digest128(hex: key.name))
            entries += try blind.verifyPack(pack).map {
                IndexEntry(chunk: $0.id, pack: pack, offset: $0.offset, length: $0.length, rawLength: $0.rawLength)
            }
        }
        try blind.writeIndexFile(entries)
        #expect(try restore(record, from: blind) == disk.bytes)
        #expect(try restore(record, from: try t.open()) == disk.bytes)
    }

    /// Local only: about files on disk.
    @Test func everyObjectIsListedAndLeftoversAreNot() throws {
        let dir = try TemporaryDirectory("heal")
        let repo = try Repository.initialize(at: dir.path, chunkSize: 4096)
        let record = try backup(DiskModel.mixed(size: 4096 * 8, seed: 43, blockSize: 4096), into: repo)
        let lock = try repo.lock(.shared)
        // A leftover temp file from a killed writer is not an object.
        let store = LocalObjectStore(root: dir.path)
        let pack = try #require(try store.list(.pack).first)
        try Data([1, 2, 3]).write(to: URL(fileURLWithPath: store.path(of: pack) + ".tmp-1-2"))
        var listed: [String] = []
        for kind in ObjectKind.allCases { listed += try store.list(kind).map { store.path(of: $0) } }
        let onDisk = filesUnder(dir.path).map { "\(dir.path)/\($0)" }.filter { !$0.contains(".tmp-") }
        #expect(listed.sorted() == onDisk.sorted())
        #expect(try store.list(.snapshot).map(\.name) == [record.id])
        #expect(try store.list(.diskMap).map(\.name) == [record.diskMap.hex])
        try lock.release()
    }
}
