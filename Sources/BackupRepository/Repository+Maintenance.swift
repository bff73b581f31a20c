import Codecs
import Foundation
import Synchronization

extension Repository {
    /// Sets several damaged chunk copies aside at once (one index reload for all), like
    /// `setChunkAside`. Each copy is named by chunk and pack, so a good copy of the same
    /// chunk elsewhere stays in use.
    public func setChunksAside(_ copies: [(chunk: ChunkID, pack: PackID, offset: UInt64)], reason: String) throws {
        guard !copies.isEmpty else { return }
        struct Note: Codable { var chunk: String, pack: String, offset: UInt64, reason: String, time: Date }
        for c in copies {
            let note = Note(chunk: c.chunk.hex, pack: c.pack.hex, offset: c.offset, reason: reason, time: Date())
            try store.put(ObjectKey(.setAside, c.chunk.hex + c.pack.hex), Array(JSONEnvelope.encoder().encode(note)), syncNow: false)
        }
        try store.syncPendingDirectories()
        reloadIndexFromScratch()
        try reloadIndex()
    }

    /// Forgets the in-memory index so the next `reloadIndex` reads every index file again
    /// (the table has no delete; used after set-asides and index rewrites).
    func reloadIndexFromScratch() {
        index.withLock { s in
            s.chunks = ChunkIndex()
            s.loaded = []
            s.damaged = [:]
        }
    }

    /// The (chunk, pack) copies recorded as set aside.
    public func setAsideList() throws -> [(chunk: ChunkID, pack: PackID)] {
        try store.list(.setAside).compactMap { key in
            guard key.name.utf8.count == 64, let c = Digest128(hex: key.name.prefix(32)), let p = Digest128(hex: key.name.suffix(32)) else {
                return nil
            }
            return (c, p)
        }
    }

    /// Every index entry the in-memory index uses (the first copy of each chunk, set-aside
    /// copies excluded), grouped by pack. Reads every loadable index file.
    func primaryEntriesByPack() throws -> [PackID: [IndexEntry]] {
        var out: [PackID: [IndexEntry]] = [:]
        let damaged = damagedIndexFiles
        for key in try store.list(.index) where damaged[key.name] == nil {
            let entries: [IndexEntry]
            do { entries = try readIndexFile(key.name) } catch let e as RepositoryError where e.code == .notFound { continue }
            for e in entries {
                guard let loc = location(of: e.chunk), loc.pack == e.pack, loc.offset == e.offset else { continue }
                out[e.pack, default: []].append(e)
            }
        }
        // A chunk listed by two index files at the same place appears twice: keep one.
        return out.mapValues { list in
            var seen = Set<ChunkID>()
            return list.filter { seen.insert($0.chunk).inserted }.sorted { $0.offset < $1.offset }
        }
    }
}
