import BlockIO
import Codecs
import Foundation
import Synchronization

/// A Tessera repository: deduplicated, compressed chunks in packs, paged disk maps and
/// snapshot records, behind an `ObjectStore`.
///
/// Read and write ordering (the crash-safety contract, see docs/FORMAT.md):
/// packs durable → index files durable → map pages + map durable → snapshot record last.
/// Readers list snapshots, then read maps, then chunks through the index.
public final class Repository: Sendable {
    public let store: any ObjectStore
    public let config: RepositoryConfig
    let codecs: CodecPool

    struct IndexState: ~Copyable {
        var chunks = ChunkIndex()
        var loaded: Set<String> = []
        /// Index files that failed to load, with why (a later `repair index` rebuilds them).
        var damaged: [String: RepositoryError] = [:]
        /// Copies of chunks known to be damaged (chunk ID, pack ID): never indexed.
        var setAside: Set<SetAsideCopy> = []
    }

    struct SetAsideCopy: Hashable {
        var chunk: ChunkID
        var pack: PackID
    }

    let index: Mutex<IndexState>

    private init(store: any ObjectStore, config: RepositoryConfig) {
        self.store = store
        self.config = config
        self.codecs = CodecPool(level: config.compressionLevel)
        self.index = Mutex(IndexState())
    }

    // MARK: - Create and open

    /// Creates a repository in an empty or missing directory.
    /// - Parameters:
    ///   - chunkSize: bytes per chunk, a power of two in 4 KiB … 4 MiB (default 64 KiB).
    ///   - compressionLevel: zstd level for chunks and map pages.
    ///   - id: fixed repository ID (fixtures); random by default.
    ///   - created: fixed creation time (fixtures).
    /// - Throws: `.alreadyExists` when a config is already there, `.invalidArgument` for bad sizes.
    public static func initialize(at path: String, chunkSize: Int = 65536, compressionLevel: Int = 1,
                                  id: String? = nil, created: Date? = nil) throws -> Repository {
        // A repository gets a folder of its own: mixed into one that holds other files, a
        // prune or a careless `rm` of one would hurt the other.
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) {
            guard isDirectory.boolValue else {
                throw RepositoryError(.invalidArgument, "\(path) is not a directory; give a new or empty directory for the repository")
            }
            let entries = (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []
            if entries.contains("config") {
                throw RepositoryError(.alreadyExists, "a repository already exists at \(path); open it instead, or choose an empty directory", object: "config")
            }
            if !entries.isEmpty {
                throw RepositoryError(.invalidArgument, "\(path) is not empty (it holds \(entries.sorted().prefix(3).joined(separator: ", "))\(entries.count > 3 ? ", ..." : "")); give a new or empty directory for the repository")
            }
        }
        let store = LocalObjectStore(root: path)
        try store.createLayout()
        return try initialize(store: store, chunkSize: chunkSize, compressionLevel: compressionLevel, id: id, created: created)
    }

    /// Creates a repository in any object store.
    public static func initialize(store: any ObjectStore, chunkSize: Int = 65536, compressionLevel: Int = 1,
                                  id: String? = nil, created: Date? = nil) throws -> Repository {
        guard DiskMap.isValidChunkSize(chunkSize) else {
            throw RepositoryError(.invalidArgument, "chunk size \(chunkSize) is not a power of two between 4 KiB and 4 MiB (64 KiB is the default)")
        }
        guard Zstd.levelRange.contains(compressionLevel) else {
            throw RepositoryError(.invalidArgument, "compression level \(compressionLevel) is outside zstd's range \(Zstd.levelRange)")
        }
        if let id, !isHexName(id) { throw RepositoryError(.invalidArgument, "repository ID \(id) must be lowercase hex") }
        guard !store.exists(.config) else {
            throw RepositoryError(.alreadyExists, "a repository already exists there; open it instead, or choose an empty directory",
                                  object: "config")
        }
        let config = RepositoryConfig(id: id ?? randomHexID(), chunkSize: chunkSize, compressionLevel: compressionLevel,
                                      created: created ?? Date())
        try store.put(.config, JSONEnvelope.encode(config, magic: "TCFG"), syncNow: true)
        return Repository(store: store, config: config)
    }

    /// Opens an existing repository and loads its index.
    /// - Throws: `.notARepository` (no config / not ours), `.newerVersion`, `.unknownFeature`,
    ///   `.damaged` (config fails its checksum).
    public static func open(at path: String) throws -> Repository {
        guard directoryExists(path) else {
            throw RepositoryError(.notARepository, "\(path) is not a repository (no such directory); check the path or create one with `tessera init`")
        }
        return try open(store: LocalObjectStore(root: path), describedAs: path)
    }

    /// Opens a repository in any object store.
    public static func open(store: any ObjectStore, describedAs label: String = "the object store") throws -> Repository {
        let bytes: [UInt8]
        do { bytes = try store.get(.config) } catch let e as RepositoryError where e.code == .notFound {
            throw RepositoryError(.notARepository, "\(label) is not a Tessera repository (it has no config file); check the path or create one with `tessera init`",
                                  object: "config")
        }
        let config: RepositoryConfig
        do {
            config = try JSONEnvelope.decode(RepositoryConfig.self, bytes, magic: "TCFG")
        } catch .wrongMagic {
            throw RepositoryError(.notARepository, "\(label) is not a Tessera repository (its config file is something else); check the path",
                                  object: "config")
        } catch .newerVersion(let v) {
            throw RepositoryError(.newerVersion, "\(label) has a config envelope version \(v), newer than this build reads; upgrade tessera",
                                  object: "config")
        } catch .damaged(let why) {
            throw RepositoryError(.damaged, "the repository config in \(label) is damaged (\(why)); restore it from a copy of the repository (its chunks are intact but cannot be read without it)",
                                  object: "config")
        }
        guard config.format == RepositoryConfig.formatName else {
            throw RepositoryError(.notARepository, "\(label) is not a Tessera repository (config format \"\(config.format)\")", object: "config")
        }
        guard config.version <= RepositoryConfig.currentVersion else {
            throw RepositoryError(.newerVersion, "\(label) uses repository format version \(config.version); this build reads up to \(RepositoryConfig.currentVersion): upgrade tessera",
                                  object: "config")
        }
        let unknown = Set(config.features).subtracting(RepositoryConfig.knownFeatures)
        guard unknown.isEmpty else {
            throw RepositoryError(.unknownFeature, "\(label) needs features this build does not support (\(unknown.sorted().joined(separator: ", "))); upgrade tessera",
                                  object: "config")
        }
        guard DiskMap.isValidChunkSize(config.chunkSize), Zstd.levelRange.contains(config.compressionLevel) else {
            throw RepositoryError(.damaged, "the repository config in \(label) has an invalid chunk size or compression level; restore it from a copy",
                                  object: "config")
        }
        let repo = Repository(store: store, config: config)
        try repo.reloadIndex()
        return repo
    }

    // MARK: - Index

    /// Loads index files not loaded yet (written by other processes since open).
    /// Damaged index files are skipped and listed in `damagedIndexFiles`.
    public func reloadIndex() throws {
        let aside = try setAsideCopies()
        let names = try store.list(.index).map(\.name)
        let new = index.withLock { s in names.filter { !s.loaded.contains($0) && s.damaged[$0] == nil } }
        var loaded: [(String, [IndexEntry])] = []
        var failed: [(String, RepositoryError)] = []
        for name in new {
            do {
                loaded.append((name, try readIndexFile(name)))
            } catch let e as RepositoryError where e.code == .damaged || e.code == .newerVersion {
                failed.append((name, e))
            } catch let e as RepositoryError where e.code == .notFound {
                continue // removed by a concurrent prune
            }
        }
        let total = loaded.reduce(0) { $0 + $1.1.count }
        index.withLock { s in
            s.setAside.formUnion(aside)
            s.chunks.reserve(s.chunks.count + total)
            for (name, entries) in loaded {
                for e in entries where !s.setAside.contains(SetAsideCopy(chunk: e.chunk, pack: e.pack)) {
                    s.chunks.insert(e.chunk, pack: e.pack, offset: e.offset, length: e.length)
                }
                s.loaded.insert(name)
            }
            for (name, e) in failed { s.damaged[name] = e }
        }
    }

    /// Reads and checks one index file.
    public func readIndexFile(_ name: String) throws -> [IndexEntry] {
        try IndexFile.decode(store.get(ObjectKey(.index, name)), name: name)
    }

    /// Index files that failed to load when the index was read.
    public var damagedIndexFiles: [String: RepositoryError] { index.withLock { $0.damaged } }

    /// Adds entries from an index file this process has just made durable.
    func addToIndex(_ entries: [IndexEntry], indexName: String) {
        index.withLock { s in
            for e in entries { s.chunks.insert(e.chunk, pack: e.pack, offset: e.offset, length: e.length) }
            s.loaded.insert(indexName)
        }
    }

    private func setAsideCopies() throws -> Set<SetAsideCopy> {
        Set(try store.list(.setAside).compactMap { key in
            guard key.name.utf8.count == 64, let c = Digest128(hex: key.name.prefix(32)), let p = Digest128(hex: key.name.suffix(32)) else {
                return nil
            }
            return SetAsideCopy(chunk: c, pack: p)
        })
    }

    /// Sets the indexed copy of a damaged chunk aside: the index stops using it, so
    /// `contains` turns false and the next backup that meets the chunk stores it again,
    /// which heals every snapshot that needs it (PBS's `.bad` rename, borg's heal).
    /// The pack itself is left alone: its other chunks may be fine.
    /// - Returns: the pack whose copy was set aside.
    @discardableResult
    public func setChunkAside(_ id: ChunkID, reason: String) throws -> PackID {
        guard let loc = location(of: id) else {
            throw RepositoryError(.notFound, "chunk \(id) is not in the index; nothing to set aside", object: "chunk \(id)")
        }
        struct Note: Codable { var chunk: String, pack: String, offset: UInt64, reason: String, time: Date }
        let note = Note(chunk: id.hex, pack: loc.pack.hex, offset: loc.offset, reason: reason, time: Date())
        try store.put(ObjectKey(.setAside, id.hex + loc.pack.hex), Array(JSONEnvelope.encoder().encode(note)), syncNow: true)
        // Rebuild the in-memory index without that copy (the table has no delete: this is rare).
        index.withLock { s in
            s.chunks = ChunkIndex()
            s.loaded = []
            s.damaged = [:]
        }
        try reloadIndex()
        return loc.pack
    }

    /// Writes an index file for chunks already in durable packs (`repair index` rebuilds
    /// lost or damaged index files from `verifyPack` results) and loads it.
    /// - Returns: the index file's name.
    @discardableResult
    public func writeIndexFile(_ entries: [IndexEntry]) throws -> String {
        let (name, bytes) = IndexFile.encode(entries)
        try store.put(ObjectKey(.index, name), bytes, syncNow: true)
        try reloadIndex()
        return name
    }

    /// Whether the repository holds a chunk (durably: its pack and index are written). O(1).
    public func contains(_ id: ChunkID) -> Bool {
        index.withLock { $0.chunks.contains(id) }
    }

    /// The first position in `ids` whose chunk the repository does not hold (zero digests,
    /// the map's zero marker, are skipped), or nil when it holds them all. One lock for all.
    func firstMissing(_ ids: [ChunkID]) -> Int? {
        index.withLock { s in ids.indices.first { ids[$0] != .zero && !s.chunks.contains(ids[$0]) } }
    }

    /// Where a chunk is stored, or nil.
    public func location(of id: ChunkID) -> ChunkLocation? {
        index.withLock { $0.chunks.location(of: id) }
    }

    /// Number of chunks in the in-memory index and the bytes it uses.
    public var indexStatistics: (chunks: Int, bytes: Int) {
        index.withLock { ($0.chunks.count, $0.chunks.memoryBytes) }
    }

    // MARK: - Chunks

    private func locate(_ id: ChunkID) throws -> ChunkLocation {
        if let l = location(of: id) { return l }
        try reloadIndex()
        if let l = location(of: id) { return l }
        let damaged = damagedIndexFiles.keys.sorted()
        let hint = damaged.isEmpty ? "run `tessera check`" :
            "index files \(damaged.map { String($0.prefix(12)) }.joined(separator: ", ")) are damaged; run `tessera repair index`"
        throw RepositoryError(.notFound, "chunk \(id) is not in the repository index; \(hint)", object: "chunk \(id)")
    }

    /// Reads a chunk, checking the stored-bytes checksum and re-hashing the decompressed data.
    /// - Throws: `.notFound`, or `.damaged` naming the chunk and its pack.
    public func readChunk(_ id: ChunkID) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: config.chunkSize)
        let n = try out.withUnsafeMutableBytes { try readChunk(id, into: $0) }
        out.removeLast(out.count - n)
        return out
    }

    /// Reads a chunk into `buffer` (at least the chunk size) and returns its length.
    public func readChunk(_ id: ChunkID, into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        let loc = try locate(id)
        let object = "chunk \(id) in pack \(loc.pack)"
        let bytes: [UInt8]
        do {
            bytes = try store.get(ObjectKey(.pack, loc.pack.hex), range: ByteRange(offset: loc.offset, length: UInt64(loc.length)))
        } catch var e as RepositoryError {
            e.message = "cannot read \(object): \(e.message)"
            e.object = "pack \(loc.pack)"
            throw e
        }
        do {
            return try codecs.withDecompressor { d in
                try ObjectEnvelope.decode(.chunk, bytes, expectedID: id, object: object, into: buffer, decompressor: d)
            }
        } catch var e as RepositoryError where e.code == .damaged {
            e.object = "pack \(loc.pack)"
            throw e
        }
    }

    /// Reads several chunks into consecutive `chunkSize` slots of `buffer` (slot k for
    /// `ids[k]`; nil entries are skipped), each checked like `readChunk`. Chunks stored next
    /// to each other in one pack are fetched with one read, so a restore in disk order reads
    /// each pack about once, front to back, instead of one open and read per chunk.
    /// - Returns: per entry, the chunk's length (0 for nil), or the error for that chunk
    ///   (missing or damaged), so the caller decides whether to stop.
    public func readChunks(_ ids: [ChunkID?], into buffer: UnsafeMutableRawBufferPointer) -> [Result<Int, RepositoryError>] {
        let slot = config.chunkSize
        precondition(buffer.count >= ids.count * slot, "readChunks needs a buffer of ids.count × chunk size bytes")
        var results = [Result<Int, RepositoryError>](repeating: .success(0), count: ids.count)
        var locations = [ChunkLocation?](repeating: nil, count: ids.count)
        for (k, id) in ids.enumerated() {
            guard let id else { continue }
            do { locations[k] = try locate(id) } catch {
                results[k] = .failure((error as? RepositoryError) ?? RepositoryError(.io, "\(error)"))
            }
        }
        for (k, end, first, runEnd) in Self.runs(locations) {
            let bytes: [UInt8]?
            do {
                bytes = try store.get(ObjectKey(.pack, first.pack.hex), range: ByteRange(offset: first.offset, length: runEnd - first.offset))
            } catch {
                bytes = nil // read them one by one below, for an error per chunk
            }
            for j in k..<end {
                let out = UnsafeMutableRawBufferPointer(rebasing: buffer[(j * slot)..<((j + 1) * slot)])
                guard let id = ids[j], let loc = locations[j] else { continue }
                do {
                    if let bytes {
                        let object = "chunk \(id) in pack \(loc.pack)"
                        do {
                            results[j] = .success(try codecs.withDecompressor { d in
                                try ObjectEnvelope.decode(.chunk, bytes, at: Int(loc.offset - first.offset), expectedID: id,
                                                          object: object, into: out, decompressor: d)
                            })
                        } catch var e as RepositoryError where e.code == .damaged {
                            e.object = "pack \(loc.pack)"
                            throw e
                        }
                    } else {
                        results[j] = .success(try readChunk(id, into: out))
                    }
                } catch {
                    results[j] = .failure((error as? RepositoryError) ?? RepositoryError(.io, "\(error)"))
                }
            }
        }
        return results
    }

    /// Slots `k..<end` whose chunks lie back to back in one pack, from `first.offset` to `runEnd`.
    private static func runs(_ locations: [ChunkLocation?]) -> [(k: Int, end: Int, first: ChunkLocation, runEnd: UInt64)] {
        var out: [(Int, Int, ChunkLocation, UInt64)] = []
        var k = 0
        while k < locations.count {
            guard let first = locations[k] else { k += 1; continue }
            var end = k + 1, runEnd = first.offset + UInt64(first.length)
            while end < locations.count, let next = locations[end], next.pack == first.pack, next.offset == runEnd {
                runEnd += UInt64(next.length)
                end += 1
            }
            out.append((k, end, first, runEnd))
            k = end
        }
        return out
    }

    /// Reads and checks a whole pack (footer, trailer checksum, every envelope, its name).
    /// The trailer lists every chunk: what `repair index` rebuilds an index from.
    public func verifyPack(_ id: PackID) throws -> [PackEntry] {
        try PackFile.parse(store.get(ObjectKey(.pack, id.hex)), id: id, verifyEnvelopes: true)
    }

    // MARK: - Disk maps

    /// Reads a disk map and every page of it, checking checksums, hashes and shape.
    public func readDiskMap(_ id: DiskMapID) throws -> DiskMap {
        let bytes = try store.get(ObjectKey(.diskMap, id.hex))
        let (h, pages) = try DiskMapCodec.decodeMap(bytes, id: id)
        var ids: [ChunkID] = []
        ids.reserveCapacity(h.entryCount)
        var cache: [Digest128: [ChunkID]] = [:]
        var raw = [UInt8](repeating: 0, count: h.entriesPerPage * 16)
        for (p, pageID) in pages.enumerated() {
            let expected = min(h.entriesPerPage, h.entryCount - p * h.entriesPerPage)
            if let cached = cache[pageID], cached.count == expected {
                ids += cached
                continue
            }
            let object = "map page \(pageID)"
            let pageBytes: [UInt8]
            do { pageBytes = try store.get(ObjectKey(.mapPage, pageID.hex)) } catch var e as RepositoryError {
                e.message = "disk map \(id.short)…: \(e.message)"
                throw e
            }
            let n = try raw.withUnsafeMutableBytes { buf in
                try codecs.withDecompressor { d in
                    try ObjectEnvelope.decode(.mapPage, pageBytes, expectedID: pageID, object: object, into: buf, decompressor: d)
                }
            }
            guard n == expected * 16 else {
                throw RepositoryError.damaged(object, "holds \(n / 16) entries where disk map \(id.short)… expects \(expected)")
            }
            var r = ByteReader(raw)
            var page: [ChunkID] = []
            page.reserveCapacity(expected)
            for _ in 0..<expected { page.append(try r.digest()) }
            cache[pageID] = page
            ids += page
        }
        return DiskMap(diskSize: h.diskSize, chunkSize: h.chunkSize, ids: ids)
    }

    // MARK: - Snapshots

    /// The IDs of every snapshot record (without reading them).
    public func snapshotIDs() throws -> [String] {
        try store.list(.snapshot).map(\.name)
    }

    /// Reads one snapshot record by its full ID.
    public func readSnapshot(id: String) throws -> SnapshotRecord {
        let object = "snapshot \(id)"
        let bytes = try store.get(ObjectKey(.snapshot, id))
        let record: SnapshotRecord
        do {
            record = try JSONEnvelope.decode(SnapshotRecord.self, bytes, magic: "TSNP")
        } catch .wrongMagic {
            throw RepositoryError.damaged(object, "wrong magic (not a snapshot record)")
        } catch .newerVersion(let v) {
            throw RepositoryError(.newerVersion, "\(object) has record version \(v); upgrade tessera", object: object)
        } catch .damaged(let why) {
            throw RepositoryError.damaged(object, why)
        }
        guard record.id == id else {
            throw RepositoryError.damaged(object, "the record inside is snapshot \(record.id) (swapped or renamed)")
        }
        return record
    }

    /// Every snapshot, sorted by time (then ID). Throws on the first damaged record.
    public func snapshots() throws -> [SnapshotRecord] {
        try snapshotIDs().map { try readSnapshot(id: $0) }.sorted { ($0.time, $0.id) < ($1.time, $1.id) }
    }

    /// Every readable snapshot sorted by time, plus the errors of the damaged ones (each
    /// naming its snapshot): for listings and check, which must go on past one bad record.
    public func readAllSnapshots() throws -> (records: [SnapshotRecord], damaged: [RepositoryError]) {
        var records: [SnapshotRecord] = []
        var damaged: [RepositoryError] = []
        for id in try snapshotIDs() {
            do { records.append(try readSnapshot(id: id)) } catch let e as RepositoryError where e.code != .io {
                damaged.append(e)
            }
        }
        return (records.sorted { ($0.time, $0.id) < ($1.time, $1.id) }, damaged)
    }

    /// The snapshot whose ID is `prefixOrID` or starts with it.
    /// - Throws: `.notFound` when none matches, `.ambiguous` when several do.
    public func snapshot(matching prefixOrID: String) throws -> SnapshotRecord {
        let p = prefixOrID.lowercased()
        guard isHexName(p) else {
            throw RepositoryError(.notFound, "\"\(prefixOrID)\" is not a snapshot ID (hex digits); list snapshots with `tessera snapshots`")
        }
        let matches = try store.list(.snapshot, prefix: p).map(\.name)
        if matches.contains(p) { return try readSnapshot(id: p) }
        switch matches.count {
        case 0:
            throw RepositoryError(.notFound, "no snapshot matches \"\(prefixOrID)\"; list snapshots with `tessera snapshots`",
                                  object: "snapshot \(prefixOrID)")
        case 1:
            return try readSnapshot(id: matches[0])
        default:
            throw RepositoryError(.ambiguous, "\"\(prefixOrID)\" matches \(matches.count) snapshots (\(matches.prefix(4).map { String($0.prefix(12)) }.joined(separator: ", "))…); give more digits",
                                  object: "snapshot \(prefixOrID)")
        }
    }

    // MARK: - Writing and locking

    /// A writer for one backup. Many threads may store chunks through it at once.
    /// - Parameter packTargetSize: seal a pack once it reaches this many bytes (default 16 MiB).
    public func makeWriter(packTargetSize: Int = 16 << 20) throws -> RepositoryWriter {
        // Capped at 1 GiB: the in-memory index keeps offsets in 32 bits.
        RepositoryWriter(repository: self, packTargetSize: min(max(packTargetSize, 1), 1 << 30))
    }

    /// Every lock file, stale or not. A lock removed since the listing is skipped, and so is
    /// one that does not decode (locks are written whole, by rename: such a file was never a
    /// lock). A lock that cannot be read throws: skipping it could let two writers in at once.
    public func locks() throws -> [LockInfo] {
        try store.list(.lock).compactMap { key in
            let bytes: [UInt8]
            do { bytes = try store.get(key) } catch let e as RepositoryError where e.code == .notFound { return nil }
            return try? JSONEnvelope.decoder().decode(LockInfo.self, from: Data(bytes))
        }
    }

    /// Takes a lock: shared locks coexist; an exclusive lock excludes everything.
    /// Stale locks (dead pid on this host, or not refreshed for 30 minutes) are ignored.
    /// - Throws: `.locked`, naming who holds the conflicting lock.
    public func lock(_ kind: LockKind) throws -> RepositoryLock {
        let now = Date()
        let info = LockInfo(id: randomHexID(), kind: kind, host: currentHostName(), pid: getpid(), started: now, refreshed: now)
        let key = ObjectKey(.lock, info.id)
        try store.put(key, Array(JSONEnvelope.encoder().encode(info)), syncNow: true)
        // Write first, then look: two racing lockers both see each other and at least one
        // backs off (restic's scheme). Both backing off is safe; both proceeding is not.
        let others: [LockInfo]
        do { others = try locks().filter { $0.id != info.id && !$0.isStale(now: now) } } catch {
            try? store.delete(key)
            throw error
        }
        if let conflict = others.first(where: { kind == .exclusive || $0.kind == .exclusive }) {
            try? store.delete(key)
            throw RepositoryError(.locked, "the repository is locked: \(conflict.summary); wait for it to finish, or if that process is gone run `tessera unlock`",
                                  object: "lock \(conflict.id)")
        }
        return RepositoryLock(info: info, store: store)
    }

    /// Removes stale locks and returns them.
    @discardableResult
    public func removeStaleLocks(now: Date = Date()) throws -> [LockInfo] {
        let stale = try locks().filter { $0.isStale(now: now) }
        for l in stale { try store.delete(ObjectKey(.lock, l.id)) }
        try store.syncPendingDirectories()
        return stale
    }
}

private func directoryExists(_ path: String) -> Bool {
    var isDir: ObjCBool = false
    return FileManager.default.fileExists(atPath: path, isDirectory: &isDir) && isDir.boolValue
}
