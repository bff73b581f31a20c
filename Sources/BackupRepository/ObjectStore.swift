import BlockIO
import Synchronization

/// The kinds of objects a repository holds. Each kind has its own place in the store.
public enum ObjectKind: String, Sendable, CaseIterable, Codable {
    case config, pack, index, mapPage, diskMap, snapshot, lock
    /// A record that one stored copy of a chunk (chunk ID + pack ID) is damaged and must not
    /// be used: the index ignores that copy, so the next backup stores the chunk again.
    case setAside

    /// Words for messages: `pack 3fa0…`, `disk map 9c1e…`.
    public var noun: String {
        switch self {
        case .config: "config"
        case .pack: "pack"
        case .index: "index file"
        case .mapPage: "map page"
        case .diskMap: "disk map"
        case .snapshot: "snapshot"
        case .lock: "lock"
        case .setAside: "set-aside chunk"
        }
    }

    /// "a pack", "an index file".
    public var nounWithArticle: String {
        (noun.first.map { "aeiou".contains($0) } ?? false ? "an " : "a ") + noun
    }
}

/// One object: its kind and its name (lowercase hex for everything but `config`).
public struct ObjectKey: Hashable, Sendable, CustomStringConvertible {
    public var kind: ObjectKind
    public var name: String

    public init(_ kind: ObjectKind, _ name: String) {
        self.kind = kind
        self.name = name
    }

    public static let config = ObjectKey(.config, "config")

    public var description: String {
        kind == .config ? "config" : "\(kind.noun) \(name)"
    }

    /// Refuses a name no object can have (every store refuses the same ones): lowercase hex
    /// of at least two digits, or `config` for the config. A name never reaches a path or a
    /// URL unchecked.
    /// - Throws: `.invalidArgument`.
    func validate() throws {
        let ok = kind == .config ? name == "config" : isHexName(name) && name.utf8.count >= 2
        guard ok else {
            throw RepositoryError(.invalidArgument, "\(kind.noun) name \"\(name)\" is not a valid object name (lowercase hex)",
                                  object: description)
        }
    }
}

/// Something in the store named like an object that is not one: not a regular file.
public struct IrregularEntry: Sendable, Hashable, CustomStringConvertible {
    /// The kind of object its name looks like.
    public var kind: ObjectKind
    /// Where it is (a path for a local store).
    public var path: String
    /// What it is: "a FIFO", "a symbolic link", "a directory" ...
    public var what: String

    public init(kind: ObjectKind, path: String, what: String) {
        self.kind = kind
        self.path = path
        self.what = what
    }

    public var description: String { "\(path) is not a regular file (\(what)) but is named like \(kind.nounWithArticle)" }
}

/// Named points inside a write, where a fault-injection hook may throw (tests).
public enum FaultStep: String, Sendable, CaseIterable {
    case beforeWrite, beforeFileSync, afterFileSync, afterRename, beforeDirectorySync, afterDirectorySync
}

/// Where a fault hook is being called: the step and the object (for directory syncs,
/// the kind whose directory is synced and the directory path as `name`).
public struct FaultPoint: Sendable, Hashable, CustomStringConvertible {
    public var step: FaultStep
    public var kind: ObjectKind
    public var name: String

    public init(step: FaultStep, kind: ObjectKind, name: String) {
        self.step = step
        self.kind = kind
        self.name = name
    }

    public var description: String { "\(step.rawValue) \(kind.noun) \(name)" }
}

/// A narrow store of write-once objects, so the repository can sit on local disk, NFS or,
/// later, S3.
///
/// Contract: `put` is atomic (a reader sees the old object, or none, or the whole new one)
/// and the object's bytes are durable when it returns; its *name* is durable once
/// `syncPendingDirectories` returns (or at once with `syncNow`). Listings never show
/// partial objects.
public protocol ObjectStore: Sendable {
    /// Writes a whole object atomically. With `syncNow` false, the directory entry is made
    /// durable by the next `syncPendingDirectories` (batched, once per directory).
    func put(_ key: ObjectKey, _ bytes: [UInt8], syncNow: Bool) throws
    /// Makes every name written with `syncNow: false` durable.
    func syncPendingDirectories() throws
    /// The whole object. Throws `.notFound` when it does not exist.
    func get(_ key: ObjectKey) throws -> [UInt8]
    /// A byte range of an object. Throws `.damaged` when the object is shorter than the range.
    func get(_ key: ObjectKey, range: ByteRange) throws -> [UInt8]
    /// The object's size in bytes.
    func size(_ key: ObjectKey) throws -> UInt64
    func exists(_ key: ObjectKey) -> Bool
    /// Every object of a kind (optionally whose name starts with `prefix`), leftovers such
    /// as temp files excluded.
    func list(_ kind: ObjectKind, prefix: String) throws -> [ObjectKey]
    func delete(_ key: ObjectKey) throws
    /// Moves a damaged object aside (out of every listing) so a later write of the same
    /// content can heal the repository. Returns where it went (for reports).
    func quarantine(_ key: ObjectKey) throws -> String
    /// Entries named like objects that are not regular files (a FIFO, a symbolic link, a
    /// directory, a device): `list` leaves them out and nothing ever opens them, so none can
    /// make a command hang or read bytes from outside the repository; `check` reports them.
    func irregularEntries() throws -> [IrregularEntry]
    /// Leftovers of killed writers (temp files) that `list` never shows, for prune.
    func leftovers() throws -> [String]
    /// Removes one leftover named by `leftovers()`.
    func removeLeftover(_ name: String) throws
    /// Starts an object written in pieces, for packs: a backup appends each chunk as it is
    /// compressed instead of holding a whole pack in memory. The object is invisible (a
    /// leftover if the writer dies) until `ObjectStream.finish(as:)`.
    func beginObject(_ kind: ObjectKind) throws -> any ObjectStream
}

/// An object being written in pieces (see `ObjectStore.beginObject`). Appends come from one
/// thread at a time (the caller serialises them); `finish` or `discard` ends it.
public protocol ObjectStream: Sendable {
    /// Bytes appended so far.
    var byteCount: Int { get }
    func append(_ bytes: UnsafeRawBufferPointer) throws
    /// Makes the bytes durable and the object visible under `name`, with the same
    /// guarantees as `put(_:_:syncNow: false)`: the name is durable after the store's next
    /// `syncPendingDirectories`.
    func finish(as name: String) throws
    /// Throws the unfinished object away.
    func discard()
}

/// An object stream for stores that can only put whole objects: the pieces gather in
/// memory and `finish` puts them.
final class BufferedObjectStream: ObjectStream {
    private let store: any ObjectStore
    private let kind: ObjectKind
    private let bytes = Mutex<[UInt8]>([])

    init(store: any ObjectStore, kind: ObjectKind) {
        self.store = store
        self.kind = kind
    }

    var byteCount: Int { bytes.withLock { $0.count } }

    func append(_ piece: UnsafeRawBufferPointer) throws {
        bytes.withLock { $0.append(contentsOf: piece) }
    }

    func finish(as name: String) throws {
        try store.put(ObjectKey(kind, name), bytes.withLock { $0 }, syncNow: false)
        discard()
    }

    func discard() {
        bytes.withLock { $0 = [] }
    }
}

extension ObjectStore {
    public func list(_ kind: ObjectKind) throws -> [ObjectKey] { try list(kind, prefix: "") }

    /// Stores that hold only whole objects (in memory, S3) have no irregular entries.
    public func irregularEntries() throws -> [IrregularEntry] { [] }

    /// Leftovers of killed writers (temp files), which `list` never shows. Stores that
    /// cannot have any return none.
    public func leftovers() throws -> [String] { [] }

    /// Removes one leftover named by `leftovers()`.
    public func removeLeftover(_ name: String) throws {}

    public func beginObject(_ kind: ObjectKind) throws -> any ObjectStream {
        BufferedObjectStream(store: self, kind: kind)
    }
}
