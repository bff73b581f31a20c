import Codecs
import Dispatch
import Synchronization
import Workers

/// Writes one backup: chunks into packs, then index files, then the disk map, then the
/// snapshot record (the commit point).
///
/// `store` may be called from many threads at once: hashing checks and compression run
/// outside any lock, each thread with its own zstd context from the pool; only appending
/// the finished envelope to the open pack's temp file takes the lock. Packs are streamed to
/// disk as they fill, so a backup's memory does not grow with the pack size. Sealed packs
/// are fsynced and renamed by a serial background queue, so the threads that hash and
/// compress never wait for the disk; at most `packsInFlight` sealed packs wait for it,
/// which bounds the dirty data in flight and gives back-pressure. Index files are written on the same queue, after the packs they
/// name, so "packs durable before any index names them" holds by construction.
///
/// Any failure closes the writer (`.writerClosed` afterwards): the packs already written
/// are harmless garbage for prune, and a retry starts a new writer.
public final class RepositoryWriter: Sendable {
    let repository: Repository
    let packTargetSize: Int

    private struct State {
        /// The pack being filled (its bytes are in its temp file, not in memory).
        var open: PackSink?
        /// Packs written (file fsynced, renamed) but not yet listed in an index file.
        var unindexed: [(id: PackID, entries: [PackEntry])] = []
        /// Chunks stored or being stored by this writer (for dedup before they are indexed).
        var pending: Set<ChunkID> = []
        var maps: Set<DiskMapID> = []
        var failure: RepositoryError?
        var committed = false
    }

    private let state = Mutex(State())
    /// Writes sealed packs and index files, in order, off the compressing threads.
    private let packQueue = DispatchQueue(label: "tessera.repository.packs")
    /// Full packs handed to `packQueue` and not yet written.
    private let packSlots = DispatchSemaphore(value: RepositoryWriter.packsInFlight)
    static let packsInFlight = 2

    init(repository: Repository, packTargetSize: Int) {
        self.repository = repository
        self.packTargetSize = packTargetSize
    }

    private var store: any ObjectStore { repository.store }

    private func checkOpen() throws {
        try state.withLock { s in
            if let f = s.failure {
                throw RepositoryError(.writerClosed, "this backup writer is closed (\(f.message)); start a new backup", object: f.object, cause: f)
            }
            if s.committed { throw RepositoryError(.writerClosed, "this backup writer already committed its snapshot; start a new writer") }
        }
    }

    /// Runs `body`; any error closes the writer.
    private func closingOnError<T>(_ body: () throws -> T) throws -> T {
        do { return try body() } catch {
            let e = (error as? RepositoryError) ?? RepositoryError(.io, "\(error)")
            state.withLock { s in if s.failure == nil { s.failure = e } }
            throw e
        }
    }

    /// Whether the repository or this writer (not committed yet) holds the chunk: a converging
    /// backup's later passes carry over what its earlier passes stored.
    public func holds(_ id: ChunkID) -> Bool {
        repository.contains(id) || state.withLock { $0.pending.contains(id) }
    }

    /// Stores a chunk unless the repository (or this writer) already has it.
    ///
    /// - Parameters:
    ///   - chunk: the uncompressed bytes (at most the repository's chunk size).
    ///   - id: XXH3-128 of `chunk`; checked, so a caller's bug cannot poison the repository.
    /// - Returns: `.new(storedBytes:)`, `.duplicate`, or `.zero` for an all-zero chunk
    ///   (nothing stored; its disk map entry must be nil).
    public func store(chunk: UnsafeRawBufferPointer, id: ChunkID) throws -> StoreOutcome {
        try checkOpen()
        guard chunk.count <= repository.config.chunkSize, chunk.count > 0 else {
            throw RepositoryError(.invalidArgument, "a chunk of \(chunk.count) bytes does not fit chunk size \(repository.config.chunkSize)")
        }
        if isAllZero(chunk) { return .zero }
        let reserved = !repository.contains(id) && state.withLock { $0.pending.insert(id).inserted }
        if !reserved {
            // A duplicate is never written, so this is the only place its ID is checked.
            try checkID(chunk, id)
            return .duplicate
        }
        let envelope: [UInt8]
        do {
            envelope = try encodeVerified(chunk, id: id)
        } catch let e as RepositoryError where e.code == .invalidArgument {
            // A wrong ID is the caller's bug: refused, and the writer stays usable.
            state.withLock { _ = $0.pending.remove(id) }
            throw e
        } catch {
            return try closingOnError { throw error }
        }
        return try closingOnError {
            let rawLength = chunk.count
            let sealed = try state.withLock { s -> SealedPack? in
                if let f = s.failure { throw f }
                if s.open == nil { s.open = try PackSink(store.beginObject(.pack)) }
                do {
                    try s.open!.append(envelope: envelope, id: id, rawLength: rawLength)
                    guard s.open!.byteCount >= packTargetSize else { return nil }
                    defer { s.open = nil }
                    return try s.open!.seal()
                } catch {
                    // The writer closes; its half-written pack file goes now, not at the next prune.
                    s.open?.discard()
                    s.open = nil
                    throw error
                }
            }
            if let sealed { enqueue(sealed) }
            return .new(storedBytes: envelope.count)
        }
    }

    /// Compresses a chunk into its envelope and verifies it before it is trusted (restic
    /// #4529): the envelope is decoded again and re-hashed against `id`, which also checks
    /// the caller's ID for every new chunk.
    private func encodeVerified(_ chunk: UnsafeRawBufferPointer, id: ChunkID) throws -> [UInt8] {
        let envelope = try repository.codecs.withCompressor { c in
            try ObjectEnvelope.encode(.chunk, id: id, raw: chunk, compressor: c)
        }
        let check = [UInt8](unsafeUninitializedCapacity: chunk.count) { buf, n in
            n = (try? repository.codecs.withDecompressor { d in
                try ObjectEnvelope.decode(.chunk, envelope, expectedID: id, object: "new chunk \(id)",
                                          into: UnsafeMutableRawBufferPointer(buf), decompressor: d)
            }) ?? 0
        }
        guard check.count == chunk.count else {
            try checkID(chunk, id)
            throw RepositoryError(.io, "chunk \(id) did not decode to its own bytes right after compression (memory or library fault); nothing was stored, retry the backup",
                                  object: "chunk \(id)")
        }
        return envelope
    }

    private func checkID(_ chunk: UnsafeRawBufferPointer, _ id: ChunkID) throws {
        guard XXH3.hash128(chunk) == id else {
            throw RepositoryError(.invalidArgument, "chunk \(id) does not hash to its ID; the caller passed the wrong ID or the buffer changed",
                                  object: "chunk \(id)")
        }
    }

    /// Hands a sealed pack to the background queue, waiting while `packsInFlight` are queued.
    private func enqueue(_ sealed: SealedPack) {
        packSlots.wait()
        packQueue.async { [self] in
            defer { packSlots.signal() }
            do {
                try checkOpen()
                try install(sealed)
                // Index every so often during a long backup, so a backup killed midway
                // still leaves its chunks findable (the next one reuses them).
                if state.withLock({ $0.unindexed.count }) >= Self.packsPerIndex { try indexWrittenPacks() }
            } catch {
                sealed.stream.discard()
                let e = (error as? RepositoryError) ?? RepositoryError(.io, "\(error)")
                state.withLock { s in if s.failure == nil { s.failure = e } }
            }
        }
    }

    /// Makes one sealed pack durable and visible (name pending the batched directory sync).
    private func install(_ sealed: SealedPack) throws {
        try sealed.finish()
        state.withLock { $0.unindexed.append((sealed.id, sealed.entries)) }
    }

    /// Writes the open pack, makes every pack name durable, then writes one index file for
    /// the packs written since the last flush and adds them to the repository's index.
    public func flush() throws {
        // Queued packs are written first (the queue is serial), then a failure in any of
        // them closes the writer before an index could name a pack that is not there.
        packQueue.sync {}
        try checkOpen()
        try closingOnError {
            try packQueue.sync {
                let sealed = try state.withLock { s -> SealedPack? in
                    defer { s.open = nil }
                    guard let open = s.open, !open.entries.isEmpty else {
                        s.open?.discard()
                        return nil
                    }
                    do { return try open.seal() } catch {
                        open.discard()
                        throw error
                    }
                }
                if let sealed {
                    do { try install(sealed) } catch {
                        sealed.stream.discard()
                        throw error
                    }
                }
                try indexWrittenPacks()
            }
        }
    }

    /// Index files are written after this many packs (and at every flush).
    static let packsPerIndex = 32

    /// Makes the written packs' names durable, then lists them in a new index file and
    /// adds them to the repository's index. Runs on `packQueue`.
    private func indexWrittenPacks() throws {
        // Packs must be durable before any index names them.
        try store.syncPendingDirectories()
        let packs = state.withLock { s in
            defer { s.unindexed = [] }
            return s.unindexed
        }
        guard !packs.isEmpty else { return }
        var entries: [IndexEntry] = []
        for p in packs {
            for e in p.entries {
                entries.append(IndexEntry(chunk: e.id, pack: p.id, offset: e.offset, length: e.length, rawLength: e.rawLength))
            }
        }
        let (name, bytes) = IndexFile.encode(entries)
        try store.put(ObjectKey(.index, name), bytes, syncNow: true)
        repository.addToIndex(entries, indexName: name)
    }

    /// Writes a disk map: flushes packs and index first, checks every entry names a stored
    /// chunk, writes the pages not stored yet, then the map object.
    /// - Returns: the map's ID, for the snapshot record.
    public func writeDiskMap(_ map: DiskMap) throws -> DiskMapID {
        try flush()
        return try closingOnError {
            guard map.chunkSize == repository.config.chunkSize else {
                throw RepositoryError(.invalidArgument, "disk map chunk size \(map.chunkSize) differs from the repository's \(repository.config.chunkSize)")
            }
            if let i = repository.firstMissing(map.ids) {
                throw RepositoryError(.invalidArgument, "disk map entry \(i) names chunk \(map.ids[i]), which is not in the repository; store it first",
                                      object: "chunk \(map.ids[i])")
            }
            let pageCount = DiskMapCodec.pageCount(entries: map.count)
            var pageIDs: [Digest128] = []
            pageIDs.reserveCapacity(pageCount)
            var toWrite: [(page: Int, id: Digest128)] = []
            var seen: Set<Digest128> = []
            for p in 0..<pageCount {
                let pageID = XXH3.hash128(DiskMapCodec.page(map, p))
                pageIDs.append(pageID)
                // Pages are content-addressed: an existing page is the same page (shared).
                if seen.insert(pageID).inserted && !store.exists(ObjectKey(.mapPage, pageID.hex)) {
                    toWrite.append((p, pageID))
                }
            }
            try writePages(toWrite, of: map)
            try store.syncPendingDirectories()
            let (id, bytes) = DiskMapCodec.encodeMap(map, pageIDs: pageIDs)
            try store.put(ObjectKey(.diskMap, id.hex), bytes, syncNow: false)
            try store.syncPendingDirectories()
            state.withLock { _ = $0.maps.insert(id) }
            return id
        }
    }

    /// Writes map pages. A first full map of a large disk has thousands of pages, each a
    /// file with its own fsync, so several are written at once to overlap fsync latency.
    private func writePages(_ pages: [(page: Int, id: Digest128)], of map: DiskMap) throws {
        try WorkerGroup.forEach(pages.count, workers: pages.count > 8 ? 4 : 1) { k in
            let raw = DiskMapCodec.page(map, pages[k].page)
            let envelope = try raw.withUnsafeBytes { r in
                try self.repository.codecs.withCompressor { c in
                    try ObjectEnvelope.encode(.mapPage, id: pages[k].id, raw: r, compressor: c)
                }
            }
            try self.store.put(ObjectKey(.mapPage, pages[k].id.hex), envelope, syncNow: false)
        }
    }

    /// Writes the snapshot record: the commit point. Before it, the backup does not exist;
    /// after it, it is complete.
    public func commit(_ record: SnapshotRecord) throws {
        try checkOpen()
        try closingOnError {
            guard isHexName(record.id) else {
                throw RepositoryError(.invalidArgument, "snapshot ID \(record.id) must be lowercase hex (use SnapshotRecord.newID())")
            }
            guard record.chunkSize == repository.config.chunkSize else {
                throw RepositoryError(.invalidArgument, "snapshot chunk size \(record.chunkSize) differs from the repository's \(repository.config.chunkSize)")
            }
            let known = state.withLock { $0.maps.contains(record.diskMap) }
            if !known {
                // A map written by an earlier writer: it must be whole and match the record.
                let map = try repository.readDiskMap(record.diskMap)
                guard map.diskSize == record.diskSize else {
                    throw RepositoryError(.invalidArgument, "snapshot disk size \(record.diskSize) differs from its disk map's \(map.diskSize)")
                }
            }
            let key = ObjectKey(.snapshot, record.id)
            guard !store.exists(key) else {
                throw RepositoryError(.alreadyExists, "snapshot \(record.id) already exists; use a new ID", object: "snapshot \(record.id)")
            }
            try store.put(key, JSONEnvelope.encode(record, magic: "TSNP"), syncNow: true)
            state.withLock { $0.committed = true }
        }
    }

    /// Gives up this backup. Packs and maps already written become garbage for prune;
    /// nothing refers to them.
    public func abandon() {
        packQueue.sync {}
        state.withLock { s in
            s.open?.discard()
            s.open = nil
            s.unindexed = []
            if s.failure == nil { s.failure = RepositoryError(.writerClosed, "the backup was abandoned") }
        }
    }
}
