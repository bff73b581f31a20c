@testable import BackupRepository
import BlockIO
import Codecs
import Foundation
import Synchronization
import Testing
import TestSupport

/// The stores the repository suites run against, as restic runs its backend test suite
/// against every backend: a directory on local disk and memory. Tests about the repository's
/// behaviour take a `StoreKind` argument; tests about files on disk (the fixture, leftover
/// temp files, fsync fault points, other processes) stay local and say so. A store that
/// joins (S3) adds a case here.
enum StoreKind: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case local
    case memory

    var testDescription: String { rawValue }

    /// An empty store of this kind, ready for `TestRepository.initialize`.
    func makeStore(_ label: String) throws -> TestRepository {
        try TestRepository(kind: self, label: label)
    }

    /// A new repository on a new store of this kind. Keep the `TestRepository` alive for
    /// the whole test (`withExtendedLifetime`): a local store's folder goes with it.
    func makeRepository(_ label: String, chunkSize: Int = 4096) throws -> (TestRepository, Repository) {
        let t = try makeStore(label)
        return (t, try t.initialize(chunkSize: chunkSize))
    }
}

/// How a test damages one object behind the repository's back.
enum Damage: String, CaseIterable, Sendable {
    case flipByte, truncate, missing, swap
}

/// One test repository's store: opens the repository again (as another process would), and
/// does what a test does behind the repository's back — damage an object (a byte flipped in
/// the file, or `MemoryObjectStore.tamper`), remove one, copy the whole repository.
final class TestRepository: Sendable {
    let kind: StoreKind
    /// The local repository's folder (a `repo` folder inside `directory`); nil in memory.
    let path: String?
    /// The store every open goes through.
    let store: any ObjectStore
    private let directory: TemporaryDirectory?
    private let memory: MemoryObjectStore?

    init(kind: StoreKind, label: String) throws {
        self.kind = kind
        switch kind {
        case .local:
            let dir = try TemporaryDirectory(label)
            directory = dir
            path = dir.path + "/repo"
            store = LocalObjectStore(root: dir.path + "/repo")
            memory = nil
        case .memory:
            let m = MemoryObjectStore()
            directory = nil
            path = nil
            store = m
            memory = m
        }
    }

    /// Creates the repository (a local one through its path, as `tessera init` does).
    func initialize(chunkSize: Int = 4096, compressionLevel: Int = 1, id: String? = nil, created: Date? = nil) throws -> Repository {
        if let path {
            return try Repository.initialize(at: path, chunkSize: chunkSize, compressionLevel: compressionLevel, id: id, created: created)
        }
        return try Repository.initialize(store: store, chunkSize: chunkSize, compressionLevel: compressionLevel, id: id, created: created)
    }

    /// Opens the repository afresh: a new in-memory index, as in another process.
    func open() throws -> Repository {
        if let path { return try Repository.open(at: path) }
        return try Repository.open(store: store)
    }

    /// Opens the repository through a wrapper of its store (an order checker, a whole-object store).
    func open(through wrap: (any ObjectStore) -> any ObjectStore) throws -> Repository {
        try Repository.open(store: wrap(store))
    }

    /// Opens the repository with `plan`'s fault hook: a local store's own hook (every step of
    /// a write: fsyncs, rename, directory syncs), or, for stores without one, `FaultingStore`
    /// (before and after each write, around each sync of names).
    func openFaulty(_ plan: FaultPlan) throws -> Repository {
        if let path { return try Repository.open(store: LocalObjectStore(root: path, faultHook: plan.hook)) }
        return try Repository.open(store: FaultingStore(base: store, hook: plan.hook))
    }

    /// `check` of the repository as the command runs it (a local one by its path).
    func check(_ readData: DataSelection = .none, setAside: Bool = true) throws -> RepositoryChecker.Report {
        let options = CheckOptions(readData: readData, setAside: setAside)
        if let path { return try RepositoryChecker.check(path: path, options: options) }
        return try RepositoryChecker.check(store: store, options: options)
    }

    /// A copy of the whole repository on a new store of the same kind.
    func copy(_ label: String) throws -> TestRepository {
        let t = try TestRepository(kind: kind, label: label)
        if let path, let to = t.path {
            try FileManager.default.copyItem(atPath: path, toPath: to)
        } else {
            for kind in ObjectKind.allCases {
                for key in try store.list(kind) { try t.store.put(key, try store.get(key), syncNow: false) }
            }
        }
        return t
    }

    // MARK: - Behind the repository's back

    /// Replaces an object's bytes: rewrites its file, or tampers with the memory store.
    func change(_ key: ObjectKey, _ body: (inout [UInt8]) -> Void) throws {
        if let memory {
            try memory.tamper(key, body)
            return
        }
        let file = (store as! LocalObjectStore).path(of: key)
        var bytes = Array(try Data(contentsOf: URL(fileURLWithPath: file)))
        body(&bytes)
        try Data(bytes).write(to: URL(fileURLWithPath: file))
    }

    /// Removes an object: its file, or the memory store's copy.
    func remove(_ key: ObjectKey) throws {
        if memory != nil {
            #expect(store.exists(key), "\(key) is not there to remove")
            try store.delete(key)
            return
        }
        try FileManager.default.removeItem(atPath: (store as! LocalObjectStore).path(of: key))
    }

    /// Damages one object: a byte flipped at `position` (default: the middle), cut at
    /// `position` (default: half), removed, or swapped with `other`.
    func damage(_ key: ObjectKey, _ how: Damage, other: ObjectKey? = nil, at position: Int? = nil) throws {
        switch how {
        case .flipByte:
            try change(key) { $0[position ?? $0.count / 2] ^= 0x20 }
        case .truncate:
            try change(key) { $0.removeLast($0.count - (position ?? $0.count / 2)) }
        case .missing:
            try remove(key)
        case .swap:
            let other = try #require(other)
            let (a, b) = (try store.get(key), try store.get(other))
            try change(key) { $0 = b }
            try change(other) { $0 = a }
        }
    }

    /// Every object (and, on disk, every file, temp files included) with its content hash: a
    /// run that must change nothing leaves this exactly as it was.
    func contents() throws -> [String: Digest128] {
        var out: [String: Digest128] = [:]
        if let path {
            for file in filesUnder(path) { out[file] = XXH3.hash128(Array(try Data(contentsOf: URL(fileURLWithPath: "\(path)/\(file)")))) }
            return out
        }
        for kind in ObjectKind.allCases {
            for key in try store.list(kind) { out["\(key)"] = XXH3.hash128(try store.get(key)) }
        }
        return out
    }

    /// Every committed snapshot restores whole, to bytes that hash to its `disk-xxh3` tag,
    /// through a fresh open. Returns how many snapshots there are.
    @discardableResult
    func verifyAllSnapshots() throws -> Int {
        try BackupRepositoryTests.verifyAllSnapshots(in: try open())
    }
}

/// Any store with a test's fault hook, called where a write can fail on every store: before
/// a put (or a pack stream's finish) and once the object is visible, and around the sync of
/// names (`syncNow`, `syncPendingDirectories`). A throw there fails the operation as an I/O
/// error would; the object is then there whole, or not at all. (A local store has finer
/// points of its own: the fsyncs and the rename.)
final class FaultingStore: ObjectStore {
    let base: any ObjectStore
    private let hook: @Sendable (FaultPoint) throws -> Void
    /// Kinds written or deleted since the last sync of names.
    private let pending = Mutex<Set<ObjectKind>>([])

    init(base: any ObjectStore, hook: @escaping @Sendable (FaultPoint) throws -> Void) {
        self.base = base
        self.hook = hook
    }

    private func point(_ step: FaultStep, _ kind: ObjectKind, _ name: String) throws {
        do { try hook(FaultPoint(step: step, kind: kind, name: name)) } catch {
            throw RepositoryError(.io, "injected fault at \(step.rawValue) \(kind.noun) \(name)")
        }
    }

    func put(_ key: ObjectKey, _ bytes: [UInt8], syncNow: Bool) throws {
        try point(.beforeWrite, key.kind, key.name)
        try base.put(key, bytes, syncNow: syncNow)
        if !syncNow { pending.withLock { _ = $0.insert(key.kind) } }
        try point(.afterRename, key.kind, key.name)
        if syncNow {
            try point(.beforeDirectorySync, key.kind, key.kind.rawValue)
            try point(.afterDirectorySync, key.kind, key.kind.rawValue)
        }
    }

    func syncPendingDirectories() throws {
        let kinds = pending.withLock { $0 }.sorted { $0.rawValue < $1.rawValue }
        for kind in kinds { try point(.beforeDirectorySync, kind, kind.rawValue) }
        try base.syncPendingDirectories()
        pending.withLock { $0.subtract(kinds) }
        for kind in kinds { try point(.afterDirectorySync, kind, kind.rawValue) }
    }

    func beginObject(_ kind: ObjectKind) throws -> any ObjectStream {
        FaultingStream(store: self, base: try base.beginObject(kind), kind: kind)
    }

    fileprivate func finish(_ stream: FaultingStream, as name: String) throws {
        try point(.beforeWrite, stream.kind, name)
        try stream.base.finish(as: name)
        pending.withLock { _ = $0.insert(stream.kind) }
        try point(.afterRename, stream.kind, name)
    }

    func delete(_ key: ObjectKey) throws {
        try base.delete(key)
        pending.withLock { _ = $0.insert(key.kind) }
    }

    func get(_ key: ObjectKey) throws -> [UInt8] { try base.get(key) }
    func get(_ key: ObjectKey, range: ByteRange) throws -> [UInt8] { try base.get(key, range: range) }
    func size(_ key: ObjectKey) throws -> UInt64 { try base.size(key) }
    func exists(_ key: ObjectKey) -> Bool { base.exists(key) }
    func list(_ kind: ObjectKind, prefix: String) throws -> [ObjectKey] { try base.list(kind, prefix: prefix) }
    func quarantine(_ key: ObjectKey) throws -> String { try base.quarantine(key) }
    func irregularEntries() throws -> [IrregularEntry] { try base.irregularEntries() }
    func leftovers() throws -> [String] { try base.leftovers() }
    func removeLeftover(_ name: String) throws { try base.removeLeftover(name) }
}

private final class FaultingStream: ObjectStream {
    let store: FaultingStore
    let base: any ObjectStream
    let kind: ObjectKind

    init(store: FaultingStore, base: any ObjectStream, kind: ObjectKind) {
        self.store = store
        self.base = base
        self.kind = kind
    }

    var byteCount: Int { base.byteCount }
    func append(_ bytes: UnsafeRawBufferPointer) throws { try base.append(bytes) }
    func finish(as name: String) throws { try store.finish(self, as: name) }
    func discard() { base.discard() }
}
