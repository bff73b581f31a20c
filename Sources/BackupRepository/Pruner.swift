import BlockIO
import Codecs
import Foundation
import Logging
import Workers

/// `prune`: deletes what no snapshot references, under the exclusive lock.
///
/// Three parts: the inventory (mark: every chunk and page a snapshot references, every
/// object and its size; read-only), the plan (`PrunePlan.make`, pure), and the execution,
/// which follows the plan in the order `PrunePlan` describes. A dry run stops after the plan.
public enum Pruner {
    /// Prunes the repository (or, with `options.dryRun`, only plans).
    /// - Parameters:
    ///   - cancellation: stops the run between steps and between packs; a cancelled prune is
    ///     like a killed one: the repository is usable and a rerun finishes the job.
    ///   - logger: notes for the operator, at `.notice` (a pack kept whole because a live chunk
    ///     in it is damaged, entries that are not regular files).
    public static func prune(_ repo: Repository, options: PruneOptions = PruneOptions(), cancellation: Cancellation? = nil,
                             logger: Logger = Logger(label: "tessera.prune", factory: { _ in SwiftLogNoOpLogHandler() })) throws -> PruneReport {
        let started = Date()
        let plan = PrunePlan.make(try inventory(repo, cancellation: cancellation, logger: logger), options: options)
        var report = options.dryRun ? plan.report : try execute(plan, in: repo, cancellation: cancellation, logger: logger)
        report.seconds = Date().timeIntervalSince(started)
        return report
    }

    /// What prune needs to know, read without changing anything.
    /// - Throws: `.damaged` or `.notFound` when it cannot tell what is live (a damaged index
    ///   file, record, map or page; a live chunk in no index): prune refuses then.
    /// - Parameter cancellation: stops the inventory between objects (it only reads).
    public static func inventory(_ repo: Repository, cancellation: Cancellation? = nil,
                                 logger: Logger = Logger(label: "tessera.prune", factory: { _ in SwiftLogNoOpLogHandler() })) throws -> PruneInventory {
        let store = repo.store
        repo.reloadIndexFromScratch()
        try repo.reloadIndex()
        if let (name, e) = repo.damagedIndexFiles.first {
            throw RepositoryError(.damaged, "prune refuses to run: index file \(name) is damaged (\(RepositoryChecker.why(e))), so it cannot tell which packs are live; run `tessera repair index` first",
                                  object: "index file \(name)")
        }
        let walk = try ReferenceWalk.walk(repo, cancellation: cancellation)
        guard walk.isComplete else {
            // An object that could not be read is not damaged: advising to forget snapshots
            // because of a passing I/O error would throw good backups away.
            let failures = walk.failures
            if let (object, e) = failures.first(where: { $0.error.code == .io }) {
                throw RepositoryError(.io, "prune cannot read \(object): \(e.message); nothing was deleted; fix the storage and run prune again",
                                      object: object, cause: e)
            }
            let named = failures.first.map { " (\($0.object): \(RepositoryChecker.why($0.error)))" } ?? ""
            throw RepositoryError(.damaged, "prune refuses to run: some snapshots, disk maps or map pages are damaged\(named), so it cannot tell what they need; run `tessera check`, then `tessera repair snapshots --forget`")
        }
        if let missing = walk.chunks.first(where: { repo.location(of: $0) == nil }) {
            throw RepositoryError(.notFound, "prune refuses to run: chunk \(missing), which a snapshot needs, is in no index (lost index file, or set aside and not healed yet); run `tessera check`, then `tessera repair index` or a backup",
                                  object: "chunk \(missing)")
        }
        for e in try store.irregularEntries() {
            logger.notice("\(e.path) is not a regular file (\(e.what)) but is named like \(e.kind.nounWithArticle): left alone; move it out of the repository")
        }
        var inventory = PruneInventory()
        inventory.snapshots = walk.records.count
        inventory.chunksLive = walk.chunks.count
        let primary = try repo.primaryEntriesByPack()
        let aside = Set(try repo.setAsideList().map(\.pack))
        func live(_ entries: [IndexEntry]?) -> [IndexEntry] { (entries ?? []).filter { walk.chunks.contains($0.chunk) } }
        var listed = Set<PackID>()
        for key in try store.list(.pack) {
            guard let id = Digest128(hex: key.name) else { continue }
            try cancellation?.check()
            listed.insert(id)
            inventory.packs.append(PruneInventory.Pack(id: id, size: try store.size(key), live: live(primary[id]),
                                                       hasSetAside: aside.contains(id)))
        }
        for (_, entries) in primary.filter({ !listed.contains($0.key) }).sorted(by: { $0.key < $1.key }) {
            inventory.liveInMissingPacks += live(entries)
        }
        func objects(_ kind: ObjectKind, live: (Digest128) -> Bool) throws -> [PruneInventory.Object] {
            try store.list(kind).map { key in
                PruneInventory.Object(key: key, size: try store.size(key), live: Digest128(hex: key.name).map(live) ?? false)
            }
        }
        inventory.indexFiles = try objects(.index) { _ in true }
        inventory.diskMaps = try objects(.diskMap) { walk.maps[$0] != nil }
        let livePages = walk.livePages
        inventory.mapPages = try objects(.mapPage) { livePages.contains($0) }
        inventory.leftovers = try store.leftovers()
        return inventory
    }

    /// Carries out a plan in its order. The report counts what was done: the plan's, unless a
    /// live chunk to be copied turned out damaged (its pack is then kept whole).
    ///
    /// Cancellation (Ctrl-C) is honoured only at safe points, where the repository is exactly
    /// as a completed earlier prune (or none) would leave it, and nothing half-done needs undoing:
    /// - before step 1 (nothing changed yet);
    /// - before step 2 and before each source pack is read in step 2's copying: the packs
    ///   written so far are named by no index file (garbage for the next prune, never a
    ///   chunk's only copy), and an open pack stream is discarded;
    /// - before step 3 (the index and the packs agree; maps and pages no snapshot names only
    ///   cost space).
    /// Never inside `replaceIndex` (between writing the new index file and deleting the old
    /// ones, which together say which packs are live) nor between an index replacement and the
    /// deletion of the packs it stopped naming: a stop there would be safe for the data too (a
    /// killed prune is), but it would leave two index files or orphaned packs for the rerun,
    /// so these run to the end once started.
    static func execute(_ plan: PrunePlan, in repo: Repository, cancellation: Cancellation?,
                        logger: Logger) throws -> PruneReport {
        let store = repo.store
        var report = plan.report
        report.indexFilesWritten = 0
        report.indexFilesDeleted = 0
        var indexFiles = plan.indexFiles

        /// Writes an index file durably, then deletes every other index file durably: from
        /// then on no index file names a pack the new one does not.
        func replaceIndex(name: String, bytes: [UInt8]) throws {
            try store.put(ObjectKey(.index, name), bytes, syncNow: true)
            report.indexFilesWritten += 1
            for old in indexFiles where old != name {
                try store.delete(ObjectKey(.index, old))
                report.indexFilesDeleted += 1
            }
            try store.syncPendingDirectories()
            indexFiles = [name]
        }

        // (1) Packs with no live chunk, as soon as no index file names them.
        try cancellation?.check()
        if let interim = plan.interimIndex {
            try replaceIndex(name: interim.name, bytes: interim.bytes)
            try remove(plan.packsToDelete, quarantined: plan.quarantined, from: store)
        }

        // (2) Packs worth rewriting: copies first, durable, then the index, then the old packs.
        if !plan.packsToRepack.isEmpty {
            try cancellation?.check()
            let copied = try copyLiveChunks(plan, repo: repo, cancellation: cancellation, logger: logger)
            let keptWhole = plan.entriesToMove.filter { copied.damaged.contains($0.pack) }
            // Packs durable before the index that names them.
            try store.syncPendingDirectories()
            let (name, bytes) = IndexFile.encode(plan.kept + keptWhole + copied.written)
            try replaceIndex(name: name, bytes: bytes)
            // A rerun after a killed prune writes byte-identical packs (same chunks, same
            // order): a new pack may carry the name of a pack planned for rewriting. It stays.
            let newPacks = Set(copied.written.map(\.pack))
            let rewritten = plan.packsToRepack.filter { !copied.damaged.contains($0) && !newPacks.contains($0) }
            try remove(rewritten, quarantined: plan.quarantined, from: store)
            report.packsRepacked = plan.packsToRepack.count - copied.damaged.count
            report.packsKept += copied.damaged.count
            report.packsQuarantined = plan.packsToDelete.filter(plan.quarantined.contains).count
                + rewritten.filter(plan.quarantined.contains).count
            report.packsWritten = newPacks.count
            report.chunksMoved = copied.written.count
        }

        // (3) Maps no snapshot names, pages no remaining map names, temp files.
        try cancellation?.check()
        for key in plan.diskMapsToDelete { try store.delete(key) }
        for key in plan.mapPagesToDelete { try store.delete(key) }
        for name in plan.leftovers { try store.removeLeftover(name) }
        try store.syncPendingDirectories()
        repo.reloadIndexFromScratch()
        try repo.reloadIndex()
        report.bytesAfter = try storedBytes(store)
        return report
    }

    /// Deletes packs (those with set-aside copies go to quarantine, for forensics), makes
    /// that durable, then drops the set-aside records that named them.
    private static func remove(_ packs: [PackID], quarantined: Set<PackID>, from store: any ObjectStore) throws {
        guard !packs.isEmpty else { return }
        for pack in packs {
            let key = ObjectKey(.pack, pack.hex)
            if quarantined.contains(pack) {
                _ = try store.quarantine(key)
            } else {
                try store.delete(key)
            }
        }
        try store.syncPendingDirectories()
        let gone = Set(packs)
        for key in try store.list(.setAside) where Digest128(hex: key.name.suffix(32)).map(gone.contains) ?? false {
            try store.delete(key)
        }
    }

    /// Step 2's copies: each planned new pack is written with the planned chunks. A source
    /// pack's live chunks are all verified (decompressed, re-hashed) before any is copied; a
    /// pack with a damaged live chunk is kept whole rather than lose that chunk.
    /// - Returns: the copies' index entries, and the source packs kept whole.
    private static func copyLiveChunks(_ plan: PrunePlan, repo: Repository, cancellation: Cancellation?,
                                       logger: Logger) throws -> (written: [IndexEntry], damaged: Set<PackID>) {
        let store = repo.store
        let liveBySource = Dictionary(grouping: plan.entriesToMove, by: \.pack)
        var source: (id: PackID, bytes: [UInt8])?
        var damaged = Set<PackID>()
        var buffer = [UInt8](repeating: 0, count: repo.config.chunkSize)

        /// The bytes of a source pack whose live chunks all verify, or nil.
        func load(_ id: PackID) throws -> [UInt8]? {
            if let source, source.id == id { return source.bytes }
            if damaged.contains(id) { return nil }
            try cancellation?.check()
            source = nil
            let bytes = try store.get(ObjectKey(.pack, id.hex))
            for e in liveBySource[id] ?? [] {
                let ok = e.offset + UInt64(e.length) <= UInt64(bytes.count) && (try? buffer.withUnsafeMutableBytes { buf in
                    try repo.codecs.withDecompressor { d in
                        try ObjectEnvelope.decode(.chunk, bytes, at: Int(e.offset), expectedID: e.chunk, object: "chunk \(e.chunk)",
                                                  into: buf, decompressor: d)
                    }
                }) != nil
                guard ok else {
                    damaged.insert(id)
                    logger.notice("pack \(id.short)… holds damaged live chunk \(e.chunk.short)…; kept whole: run `tessera check --read-data`")
                    return nil
                }
            }
            source = (id, bytes)
            return bytes
        }

        var written: [IndexEntry] = []
        for planned in plan.newPacks {
            var sink: PackSink?
            do {
                for e in planned.entries {
                    guard let bytes = try load(e.pack) else { continue }
                    if sink == nil { sink = try PackSink(store.beginObject(.pack)) }
                    try sink!.append(envelope: Array(bytes[Int(e.offset)..<Int(e.offset) + e.length]), id: e.chunk, rawLength: e.rawLength)
                }
                guard let open = sink else { continue }
                let sealed = try open.seal()
                try sealed.finish()
                sink = nil
                written += sealed.entries.map {
                    IndexEntry(chunk: $0.id, pack: sealed.id, offset: $0.offset, length: $0.length, rawLength: $0.rawLength)
                }
            } catch {
                sink?.discard()
                throw error
            }
        }
        return (written, damaged)
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
