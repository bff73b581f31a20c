@testable import BackupRepository
import BlockIO
import Codecs
import Foundation
import Testing
import TestSupport

/// A store that can only put whole objects (as an S3 store would without multipart): it
/// forwards to a directory but keeps `ObjectStore`'s default `beginObject`, which gathers a
/// pack in memory and puts it when it is finished.
struct WholeObjectStore: ObjectStore {
    let inner: LocalObjectStore

    func put(_ key: ObjectKey, _ bytes: [UInt8], syncNow: Bool) throws { try inner.put(key, bytes, syncNow: syncNow) }
    func syncPendingDirectories() throws { try inner.syncPendingDirectories() }
    func get(_ key: ObjectKey) throws -> [UInt8] { try inner.get(key) }
    func get(_ key: ObjectKey, range: ByteRange) throws -> [UInt8] { try inner.get(key, range: range) }
    func size(_ key: ObjectKey) throws -> UInt64 { try inner.size(key) }
    func exists(_ key: ObjectKey) -> Bool { inner.exists(key) }
    func list(_ kind: ObjectKind, prefix: String) throws -> [ObjectKey] { try inner.list(kind, prefix: prefix) }
    func delete(_ key: ObjectKey) throws { try inner.delete(key) }
    func quarantine(_ key: ObjectKey) throws -> String { try inner.quarantine(key) }
}

struct WholeObjectStoreTests {
    /// Packs written through the in-memory stream are the same format: they read back, check
    /// clean with every byte re-hashed, and a local open of the same directory restores them.
    @Test func packsGatheredInMemoryAreOrdinaryPacks() throws {
        let dir = try TemporaryDirectory("wholestore")
        let store = WholeObjectStore(inner: LocalObjectStore(root: dir.path))
        try store.inner.createLayout()
        let repo = try Repository.initialize(store: store, chunkSize: 4096)
        let disk = DiskModel.mixed(size: 4096 * 30, seed: 12, blockSize: 4096)
        let record = try backup(disk, into: repo, packTargetSize: 20 << 10)
        #expect(try store.list(.pack).count > 1)
        #expect(try store.inner.leftovers().isEmpty)
        let report = try RepositoryChecker.check(repo, options: CheckOptions(readData: .all))
        #expect(report.isClean, "\(report.findings)")
        #expect(try restore(record, from: try Repository.open(at: dir.path)) == disk.bytes)
    }
}
