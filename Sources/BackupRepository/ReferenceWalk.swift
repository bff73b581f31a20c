import BlockIO
import Codecs
import Workers

/// Everything the committed snapshots reference: records → disk maps → map pages →
/// chunks, read object by object so one damaged object is reported and the walk goes on.
/// Shared pages are read once. Check, repair and prune all start from this walk.
struct ReferenceWalk {
    struct MapInfo {
        var header: DiskMapCodec.Header
        var pages: [Digest128]
    }

    /// Readable snapshot records, sorted by time.
    var records: [SnapshotRecord] = []
    /// Snapshot IDs whose record cannot be read, with why.
    var damagedRecords: [(id: String, error: RepositoryError)] = []
    /// Every map a readable record names: its header and pages, or why it cannot be read.
    var maps: [DiskMapID: Result<MapInfo, RepositoryError>] = [:]
    /// Every page a readable map names: its entry count, or why it cannot be read.
    var pages: [Digest128: Result<Int, RepositoryError>] = [:]
    /// Every chunk a readable page names (zero entries excluded).
    var chunks: Set<ChunkID> = []

    /// Walks every snapshot (or those named by `snapshotIDs`: a record deleted since is
    /// skipped). Throws only when the store cannot be listed, or `Cancelled` (checked between
    /// objects).
    static func walk(_ repo: Repository, snapshotIDs: [String]? = nil, cancellation: Cancellation? = nil) throws -> ReferenceWalk {
        var w = ReferenceWalk()
        var records: [SnapshotRecord] = []
        for id in try snapshotIDs ?? repo.snapshotIDs() {
            try cancellation?.check()
            do {
                records.append(try repo.readSnapshot(id: id))
            } catch let e as RepositoryError where e.code == .notFound {
                continue
            } catch let e as RepositoryError where e.code != .io {
                w.damagedRecords.append((id, e))
            }
        }
        w.records = records.sorted { ($0.time, $0.id) < ($1.time, $1.id) }
        for r in w.records where w.maps[r.diskMap] == nil {
            try cancellation?.check()
            w.maps[r.diskMap] = Result { try repo.readMapHeader(r.diskMap) }.mapError(Self.repositoryError)
        }
        for case .success(let info) in w.maps.values {
            for (p, pageID) in info.pages.enumerated() where w.pages[pageID] == nil {
                try cancellation?.check()
                let expected = min(info.header.entriesPerPage, info.header.entryCount - p * info.header.entriesPerPage)
                do {
                    let entries = try repo.readMapPage(pageID)
                    guard entries.count == expected else {
                        throw RepositoryError.damaged("map page \(pageID)", "holds \(entries.count) entries where a disk map expects \(expected)")
                    }
                    for e in entries where e != .zero { w.chunks.insert(e) }
                    w.pages[pageID] = .success(entries.count)
                } catch {
                    w.pages[pageID] = .failure(Self.repositoryError(error))
                }
            }
        }
        return w
    }

    static func repositoryError(_ error: any Error) -> RepositoryError {
        (error as? RepositoryError) ?? RepositoryError(.io, "\(error)")
    }

    /// Every readable map's pages, for prune's mark phase.
    var livePages: Set<Digest128> {
        var out = Set<Digest128>()
        for case .success(let info) in maps.values { out.formUnion(info.pages) }
        return out
    }

    /// True when every record, map and page reads: then `chunks` is complete.
    var isComplete: Bool {
        damagedRecords.isEmpty && maps.values.allSatisfy { if case .success = $0 { true } else { false } }
            && pages.values.allSatisfy { if case .success = $0 { true } else { false } }
    }

    /// Every object the walk could not read, with why: records, then maps, then pages.
    var failures: [(object: String, error: RepositoryError)] {
        damagedRecords.map { ("snapshot \($0.id)", $0.error) }
            + maps.compactMap { id, r in if case .failure(let e) = r { ("disk map \(id)", e) } else { nil } }
            + pages.compactMap { id, r in if case .failure(let e) = r { ("map page \(id)", e) } else { nil } }
    }

    /// The snapshots whose map is `map`, with the whole disk as the range.
    func damage(ofMap map: DiskMapID) -> [SnapshotDamage] {
        records.filter { $0.diskMap == map }.map {
            SnapshotDamage(snapshot: $0.id, disk: $0.diskName, ranges: $0.diskSize == 0 ? [] : [ByteRange(offset: 0, length: $0.diskSize)])
        }.sorted()
    }

    /// The snapshots whose map holds `page`, with the bytes each position of it covers.
    func damage(ofPage page: Digest128) -> [SnapshotDamage] {
        var out: [SnapshotDamage] = []
        for r in records {
            guard case .success(let info)? = maps[r.diskMap] else { continue }
            let h = info.header
            let span = UInt64(h.entriesPerPage) * UInt64(h.chunkSize)
            var ranges: [ByteRange] = []
            for (p, id) in info.pages.enumerated() where id == page {
                let start = UInt64(p) * span
                ranges.append(ByteRange(offset: start, length: min(span, h.diskSize - start)))
            }
            if !ranges.isEmpty { out.append(SnapshotDamage(snapshot: r.id, disk: r.diskName, ranges: ranges.coalesced())) }
        }
        return out.sorted()
    }

    /// Maps chunks back through every disk map that references them: for each chunk, the
    /// snapshots and disk byte ranges that hold it. Reads each needed page once.
    func damage(ofChunks targets: Set<ChunkID>, in repo: Repository) -> [ChunkID: [SnapshotDamage]] {
        guard !targets.isEmpty else { return [:] }
        // Per page: the positions that hold a target chunk.
        var hits: [Digest128: [(Int, ChunkID)]] = [:]
        for (pageID, state) in pages {
            guard case .success = state, let entries = try? repo.readMapPage(pageID) else { continue }
            let found = entries.enumerated().filter { targets.contains($0.element) }.map { ($0.offset, $0.element) }
            if !found.isEmpty { hits[pageID] = found }
        }
        var ranges: [ChunkID: [String: [ByteRange]]] = [:]
        var disks: [String: String] = [:]
        for r in records {
            guard case .success(let info)? = maps[r.diskMap] else { continue }
            let h = info.header
            for (p, pageID) in info.pages.enumerated() {
                guard let found = hits[pageID] else { continue }
                for (j, chunk) in found {
                    let start = UInt64(p * h.entriesPerPage + j) * UInt64(h.chunkSize)
                    guard start < h.diskSize else { continue }
                    let range = ByteRange(offset: start, length: min(UInt64(h.chunkSize), h.diskSize - start))
                    ranges[chunk, default: [:]][r.id, default: []].append(range)
                    disks[r.id] = r.diskName
                }
            }
        }
        return ranges.mapValues { bySnapshot in
            bySnapshot.map { SnapshotDamage(snapshot: $0.key, disk: disks[$0.key] ?? "?", ranges: $0.value.sorted().coalesced()) }.sorted()
        }
    }
}

/// Merges the damage of several objects into one list (one entry per snapshot).
func mergeDamage(_ lists: [[SnapshotDamage]]) -> [SnapshotDamage] {
    var bySnapshot: [String: SnapshotDamage] = [:]
    for d in lists.joined() {
        if var have = bySnapshot[d.snapshot] {
            // Empty ranges mean the whole snapshot: it absorbs everything.
            have.ranges = have.ranges.isEmpty || d.ranges.isEmpty ? [] : (have.ranges + d.ranges).sorted().coalesced()
            bySnapshot[d.snapshot] = have
        } else {
            bySnapshot[d.snapshot] = d
        }
    }
    return bySnapshot.values.sorted()
}

extension Repository {
    /// Reads and checks a disk map object (not its pages).
    func readMapHeader(_ id: DiskMapID) throws -> ReferenceWalk.MapInfo {
        let (h, pages) = try DiskMapCodec.decodeMap(store.get(ObjectKey(.diskMap, id.hex)), id: id)
        return ReferenceWalk.MapInfo(header: h, pages: pages)
    }

    /// Reads and checks one map page: its entries (zero digests for zero chunks).
    func readMapPage(_ id: Digest128) throws -> [ChunkID] {
        let bytes = try store.get(ObjectKey(.mapPage, id.hex))
        let object = "map page \(id)"
        let header = try ObjectEnvelope.parseHeader(.mapPage, bytes, object: object)
        guard header.rawLength % 16 == 0, header.rawLength <= (1 << 20) * 16 else {
            throw RepositoryError.damaged(object, "its length \(header.rawLength) is not a whole number of entries")
        }
        var raw = [UInt8](repeating: 0, count: header.rawLength)
        let n = try raw.withUnsafeMutableBytes { buf in
            try codecs.withDecompressor { d in
                try ObjectEnvelope.decode(.mapPage, bytes, expectedID: id, object: object, into: buf, decompressor: d)
            }
        }
        var r = ByteReader(raw)
        var out: [ChunkID] = []
        out.reserveCapacity(n / 16)
        for _ in 0..<(n / 16) { out.append(try r.digest()) }
        return out
    }
}
