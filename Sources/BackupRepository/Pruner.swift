import BlockIO
import Codecs
import Foundation

/// How `prune` decides.
public struct PruneOptions: Sendable {
    /// Rewrite a pack when at least this share of its bytes is garbage (0.2 = 20 %).
    /// A pack with no live chunk is deleted whatever the threshold.
    public var repackThreshold = 0.2
    /// Plan and report, change nothing.
    public var dryRun = false
    /// Target size of the packs written while repacking.
    public var packTargetSize = 16 << 20

    public init(repackThreshold: Double = 0.2, dryRun: Bool = false) {
        self.repackThreshold = repackThreshold
        self.dryRun = dryRun
    }
}

/// What `prune` did (or, with `dryRun`, would do).
public struct PruneReport: Sendable, Equatable, Codable {
    public var snapshots = 0
    public var chunksLive = 0
    public var packsKept = 0
    public var packsDeleted = 0
    public var packsRepacked = 0
    /// Packs holding set-aside (damaged) copies: moved to `quarantine/`, not deleted.
    public var packsQuarantined = 0
    public var packsWritten = 0
    public var chunksMoved = 0
    public var indexFilesDeleted = 0
    public var indexFilesWritten = 0
    public var diskMapsDeleted = 0
    public var mapPagesDeleted = 0
    public var leftoversDeleted = 0
    /// Bytes of packs, index files, maps and pages before and after.
    public var bytesBefore: UInt64 = 0
    public var bytesAfter: UInt64 = 0
    public var bytesFreed: UInt64 { bytesBefore > bytesAfter ? bytesBefore - bytesAfter : 0 }
    public var dryRun = false
    public var seconds: Double = 0

    public init() {}

    enum CodingKeys: String, CodingKey {
        case snapshots, chunksLive, packsKept, packsDeleted, packsRepacked, packsQuarantined, packsWritten, chunksMoved,
             indexFilesDeleted, indexFilesWritten, diskMapsDeleted, mapPagesDeleted, leftoversDeleted, bytesBefore,
             bytesAfter, dryRun, seconds
    }
}

/// `prune`: deletes what no snapshot references, under the exclusive lock.
///
/// Mark: every chunk and page referenced by any snapshot. Sweep, in an order that leaves a
/// usable repository wherever it is interrupted (killed): (1) live chunks of partly used
/// packs are copied into new packs, which are made durable; (2) one new index file lists
/// every live chunk, and is made durable; (3) only then are the old index files deleted,
/// (4) then the old packs, (5) then maps and pages no snapshot uses, and leftover temp
/// files. At every instant each index entry names an existing pack, and a rerun finishes
/// the job (packs written by a killed run that no index names are garbage the rerun deletes).
public enum Pruner {
    public static func prune(_ repo: Repository, options: PruneOptions = PruneOptions(),
                             log: @Sendable (String) -> Void = { _ in }) throws -> PruneReport {
        let started = Date()
        var report = PruneReport()
        report.dryRun = options.dryRun
        let store = repo.store
        repo.reloadIndexFromScratch()
        try repo.reloadIndex()
        if let (name, e) = repo.damagedIndexFiles.first {
            throw RepositoryError(.damaged, "prune refuses to run: index file \(name) is damaged (\(RepositoryChecker.why(e))), so it cannot tell which packs are live; run `tessera repair index` first",
                                  object: "index file \(name)")
        }

        // Mark.
        let walk = try ReferenceWalk.walk(repo)
        guard walk.isComplete else {
            throw RepositoryError(.damaged, "prune refuses to run: some snapshots, disk maps or map pages are damaged, so it cannot tell what they need; run `tessera check`, then `tessera repair snapshots --forget`")
        }
        report.snapshots = walk.records.count
        report.chunksLive = walk.chunks.count
        if let missing = walk.chunks.first(where: { repo.location(of: $0) == nil }) {
            throw RepositoryError(.notFound, "prune refuses to run: chunk \(missing), which a snapshot needs, is in no index (lost index file, or set aside and not healed yet); run `tessera check`, then `tessera repair index` or a backup",
                                  object: "chunk \(missing)")
        }
        let primary = try repo.primaryEntriesByPack()
        let asidePacks = Set(try repo.setAsideList().map(\.pack))
        let listedPacks = try store.list(.pack).compactMap { Digest128(hex: $0.name) }
        let indexFiles = try store.list(.index).map(\.name)
        report.bytesBefore = try storedBytes(store)

        // Plan per pack.
        var keep: [IndexEntry] = []
        var drop: [PackID] = []
        var repack: [(PackID, [IndexEntry])] = []
        for pack in listedPacks {
            let live = (primary[pack] ?? []).filter { walk.chunks.contains($0.chunk) }
            if live.isEmpty {
                drop.append(pack)
                continue
            }
            let size = try store.size(ObjectKey(.pack, pack.hex))
            let liveBytes = live.reduce(UInt64(0)) { $0 + UInt64($1.length) }
            let garbage = size > liveBytes ? Double(size - liveBytes) / Double(max(size, 1)) : 0
            if garbage >= options.repackThreshold || asidePacks.contains(pack) {
                repack.append((pack, live))
            } else {
                keep += live
            }
        }
        // Live chunks whose pack is not listed (missing): their entries stay, nothing to gain.
        let listedSet = Set(listedPacks)
        for (pack, entries) in primary where !listedSet.contains(pack) {
            keep += entries.filter { walk.chunks.contains($0.chunk) }
        }

        // (1) Copy live chunks out of packs being rewritten; each is verified first, and a
        // pack with a damaged live chunk is kept whole rather than lose that chunk.
        var written: [IndexEntry] = []
        var rewritten: [PackID] = []
        // New packs stream to temp files (a dry run keeps them in memory and drops them).
        func newSink() throws -> PackSink {
            try PackSink(options.dryRun ? BufferedObjectStream(store: store, kind: .pack) : store.beginObject(.pack))
        }
        var sink: PackSink? = nil
        defer { sink?.discard() }
        func seal() throws {
            guard let open = sink, !open.entries.isEmpty else { return }
            sink = nil
            let sealed = try open.seal()
            if options.dryRun { open.discard() } else {
                do { try sealed.finish() } catch {
                    open.discard()
                    throw error
                }
            }
            written += sealed.entries.map { IndexEntry(chunk: $0.id, pack: sealed.id, offset: $0.offset, length: $0.length, rawLength: $0.rawLength) }
            report.packsWritten += 1
        }
        var buffer = [UInt8](repeating: 0, count: repo.config.chunkSize)
        for (pack, live) in repack {
            let bytes = try store.get(ObjectKey(.pack, pack.hex))
            var envelopes: [(IndexEntry, ArraySlice<UInt8>)] = []
            var intact = true
            for e in live {
                let ok = e.offset + UInt64(e.length) <= UInt64(bytes.count) && (try? buffer.withUnsafeMutableBytes { buf in
                    try repo.codecs.withDecompressor { d in
                        try ObjectEnvelope.decode(.chunk, bytes, at: Int(e.offset), expectedID: e.chunk, object: "chunk \(e.chunk)",
                                                  into: buf, decompressor: d)
                    }
                }) != nil
                guard ok else {
                    intact = false
                    log("pack \(pack.short)… holds damaged live chunk \(e.chunk.short)…; kept whole: run `tessera check --read-data`")
                    break
                }
                envelopes.append((e, bytes[Int(e.offset)..<Int(e.offset) + e.length]))
            }
            guard intact else {
                keep += live
                continue
            }
            for (e, envelope) in envelopes {
                if sink == nil { sink = try newSink() }
                try sink!.append(envelope: Array(envelope), id: e.chunk, rawLength: e.rawLength)
                report.chunksMoved += 1
                if sink!.byteCount >= options.packTargetSize { try seal() }
            }
            rewritten.append(pack)
            report.packsRepacked += 1
        }
        try seal()
        // A rerun after a killed prune writes byte-identical packs (same chunks, same order),
        // so a new pack may carry the name of a leftover planned for deletion: it stays.
        let newPacks = Set(written.map(\.pack))
        drop.removeAll { newPacks.contains($0) }
        rewritten.removeAll { newPacks.contains($0) }
        report.packsDeleted = drop.filter { !asidePacks.contains($0) }.count
        report.packsQuarantined = (drop + rewritten).filter { asidePacks.contains($0) }.count
        report.packsKept = listedPacks.count - drop.count - rewritten.count
        let changed = !drop.isEmpty || !rewritten.isEmpty

        if !options.dryRun {
            // Packs durable before the index that names them.
            try store.syncPendingDirectories()
            if changed {
                // (2) One index for every live chunk, durable before (3) the old ones go.
                let (name, bytes) = IndexFile.encode(keep + written)
                try store.put(ObjectKey(.index, name), bytes, syncNow: true)
                report.indexFilesWritten = 1
                for old in indexFiles where old != name {
                    try store.delete(ObjectKey(.index, old))
                    report.indexFilesDeleted += 1
                }
                try store.syncPendingDirectories()
                // (4) Old packs. Packs with set-aside copies go to quarantine for forensics.
                for pack in drop + rewritten {
                    let key = ObjectKey(.pack, pack.hex)
                    if asidePacks.contains(pack) {
                        _ = try store.quarantine(key)
                    } else {
                        try store.delete(key)
                    }
                }
                try store.syncPendingDirectories()
                let gone = Set(drop + rewritten)
                for key in try store.list(.setAside) where Digest128(hex: key.name.suffix(32)).map(gone.contains) ?? false {
                    try store.delete(key)
                }
            }
        } else if changed {
            report.indexFilesWritten = 1
            report.indexFilesDeleted = indexFiles.count
        }

        // (5) Maps no snapshot names, then pages no remaining map names, then temp files.
        for key in try store.list(.diskMap) where !(Digest128(hex: key.name).map { walk.maps[$0] != nil } ?? false) {
            if !options.dryRun { try store.delete(key) }
            report.diskMapsDeleted += 1
        }
        let livePages = walk.livePages
        for key in try store.list(.mapPage) where !(Digest128(hex: key.name).map(livePages.contains) ?? false) {
            if !options.dryRun { try store.delete(key) }
            report.mapPagesDeleted += 1
        }
        for name in try store.leftovers() {
            if !options.dryRun { try store.removeLeftover(name) }
            report.leftoversDeleted += 1
        }
        if !options.dryRun {
            try store.syncPendingDirectories()
            repo.reloadIndexFromScratch()
            try repo.reloadIndex()
            report.bytesAfter = try storedBytes(store)
        } else {
            report.bytesAfter = report.bytesBefore
        }
        report.seconds = Date().timeIntervalSince(started)
        return report
    }

    /// Bytes held by packs, index files, maps and pages.
    static func storedBytes(_ store: any ObjectStore) throws -> UInt64 {
        var total: UInt64 = 0
        for kind in [ObjectKind.pack, .index, .diskMap, .mapPage] {
            for key in try store.list(kind) { total += (try? store.size(key)) ?? 0 }
        }
        return total
    }
}

extension Repository {
    /// Takes a lock, retrying for up to `wait` seconds while another process holds a
    /// conflicting one (a backup's shared lock, for prune).
    /// - Throws: `.locked` when the wait runs out.
    public func lock(_ kind: LockKind, wait: TimeInterval) throws -> RepositoryLock {
        let deadline = Date().addingTimeInterval(wait)
        while true {
            do { return try lock(kind) } catch let e as RepositoryError where e.code == .locked && Date() < deadline {
                // Jitter, so two waiters do not keep backing off in step.
                Thread.sleep(forTimeInterval: Double.random(in: 0.5...1.5))
            }
        }
    }
}
