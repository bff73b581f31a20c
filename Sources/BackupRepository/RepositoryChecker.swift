import BlockIO
import Codecs
import Foundation
import Synchronization
import Workers

/// What `check` does besides proving structure.
public struct CheckOptions: Sendable, Equatable {
    /// Which packs are read whole, every chunk in them decompressed and re-hashed.
    public var readData: DataSelection = .none
    /// Set damaged or lost chunk copies aside (the next backup stores them again).
    public var setAside = true
    /// Packs checked at once.
    public var workers = max(1, ProcessInfo.processInfo.activeProcessorCount)

    public init(readData: DataSelection = .none, setAside: Bool = true) {
        self.readData = readData
        self.setAside = setAside
    }
}

/// `check`: proves a repository's structure (every snapshot record, disk map and map page
/// reads; every chunk a map names is indexed, its pack exists and the pack's trailer lists
/// it) and, with `readData`, reads packs whole and re-hashes every chunk in them.
///
/// Two parts, like prune: the plan (`CheckPlan`: what will be read, made from listings
/// alone; a dry run prints it and stops) and its execution, which reads exactly that.
/// Findings are values, each naming the object and the snapshots and disk byte ranges it
/// damages; the checker throws only when the repository cannot be listed at all.
/// Packs are checked in parallel, each pack read sequentially in one piece.
public enum RepositoryChecker {
    /// The result of a check: findings (empty when clean) and counts.
    public struct Report: Sendable {
        public var findings: [CheckFinding]
        public var summary: CheckSummary
        public var isClean: Bool { findings.isEmpty }
    }

    /// Checks the repository at `path`. A damaged or missing config is a finding (the
    /// check cannot go further without it); a directory that is no repository at all throws.
    public static func check(path: String, options: CheckOptions = CheckOptions(), cancellation: Cancellation? = nil,
                             progress: @escaping @Sendable (CheckProgress) -> Void = { _ in }) throws -> Report {
        // A directory with the layout but no config still held a repository.
        let layout = DurableFile.exists("\(path)/snapshots") && DurableFile.exists("\(path)/packs")
        guard layout || DurableFile.exists(path) else {
            throw RepositoryError(.notARepository, "\(path) is not a repository (no such directory); check the path or create one with `tessera init`")
        }
        return try check(store: LocalObjectStore(root: path), describedAs: path, hasLayout: layout, options: options,
                         cancellation: cancellation, progress: progress)
    }

    /// Checks the repository in `store`, like `check(path:)`. Without a config, the store
    /// is taken for a damaged repository (a finding) when `hasLayout` says so, or by default
    /// when it holds snapshot records or packs; otherwise it is not a repository (throws).
    public static func check(store: any ObjectStore, describedAs label: String = "the object store", hasLayout: Bool? = nil,
                             options: CheckOptions = CheckOptions(), cancellation: Cancellation? = nil,
                             progress: @escaping @Sendable (CheckProgress) -> Void = { _ in }) throws -> Report {
        let started = Date()
        do {
            let repo = try Repository.open(store: store, describedAs: label)
            return try check(repo, options: options, cancellation: cancellation, progress: progress)
        } catch let e as RepositoryError where e.object == "config" && (e.code == .damaged || e.code == .notARepository) {
            let ids = (try? store.list(.snapshot).map(\.name)) ?? []
            let layout = try hasLayout ?? (!ids.isEmpty || !store.list(.pack).isEmpty)
            // No config and no repository layout either: this is not a repository.
            if e.code == .notARepository && !layout { throw e }
            let what = e.code == .damaged ? e.message : "the config file is missing but \(label) holds a repository's objects"
            let finding = CheckFinding(kind: .config, object: "config",
                                       problem: "\(what); restore the config from a copy of the repository: nothing can be read without it",
                                       damage: ids.map { SnapshotDamage(snapshot: $0, disk: "?", ranges: []) })
            var summary = CheckSummary()
            summary.snapshots = ids.count
            summary.findings = 1
            summary.seconds = Date().timeIntervalSince(started)
            return Report(findings: [finding], summary: summary)
        }
    }

    /// Checks an open repository: plans from the listings, then carries the plan out.
    /// - Parameter cancellation: stops the check between objects and between packs (it then
    ///   throws `Cancelled`); a cancelled check sets nothing aside.
    public static func check(_ repo: Repository, options: CheckOptions = CheckOptions(), cancellation: Cancellation? = nil,
                             progress: @escaping @Sendable (CheckProgress) -> Void = { _ in }) throws -> Report {
        let started = Date()
        let plan = try plan(repo, options: options)
        var report = try execute(plan, in: repo, cancellation: cancellation, progress: progress)
        report.summary.seconds = Date().timeIntervalSince(started)
        return report
    }

    /// What a check of `repo` would read (the dry run's answer). Reads only listings.
    public static func plan(_ repo: Repository, options: CheckOptions = CheckOptions()) throws -> CheckPlan {
        CheckPlan.make(try inventory(repo), options: options)
    }

    /// What the check will look at: listings (with pack sizes) and the index, read-only.
    ///
    /// Listed in the order a backup writes them (packs, then index, then the record, each
    /// durable before the next), backwards: the records first, then the index is reloaded,
    /// then the packs. So a backup committing meanwhile is not in the plan at all, or every
    /// chunk its record needs is indexed and every pack it wrote is listed.
    public static func inventory(_ repo: Repository) throws -> CheckInventory {
        var inventory = CheckInventory()
        inventory.snapshots = try repo.snapshotIDs()
        try repo.reloadIndex()
        inventory.setAside = try repo.setAsideList().map { SetAsideRecord(chunk: $0.chunk, pack: $0.pack) }
        for key in try repo.store.list(.pack) {
            guard let id = Digest128(hex: key.name) else { continue }
            // A pack gone since it was listed (a check without a lock, beside a prune) is missing.
            if let size = try? repo.store.size(key) { inventory.packSizes[id] = size }
        }
        inventory.indexed = try repo.primaryEntriesByPack()
        inventory.indexFiles = try repo.store.list(.index).map(\.name)
        inventory.diskMaps = try repo.store.list(.diskMap)
        inventory.mapPages = try repo.store.list(.mapPage)
        return inventory
    }

    /// Carries a plan out: reads what it says and nothing more.
    /// - Parameter cancellation: stops between objects and between packs (`Cancelled`);
    ///   a cancelled check sets nothing aside.
    public static func execute(_ plan: CheckPlan, in repo: Repository, cancellation: Cancellation? = nil,
                               progress: @escaping @Sendable (CheckProgress) -> Void = { _ in }) throws -> Report {
        let started = Date()
        let options = plan.options
        var summary = CheckSummary()
        var findings: [CheckFinding] = []
        let walk = try ReferenceWalk.walk(repo, snapshotIDs: plan.snapshots, cancellation: cancellation)
        summary.snapshots = walk.records.count + walk.damagedRecords.count
        summary.diskMaps = walk.maps.count
        summary.mapPages = walk.pages.count
        summary.chunksReferenced = walk.chunks.count

        findings += structureFindings(repo, walk)
        // Things named like objects that are not regular files: never opened (a FIFO would
        // block the check forever, a symbolic link would read bytes from elsewhere).
        for e in try repo.store.irregularEntries() {
            findings.append(CheckFinding(kind: CheckFinding.Kind(e.kind), object: e.path,
                                         problem: "not a regular file (\(e.what)) but named like \(e.kind.nounWithArticle), so no command reads it; move it out of the repository",
                                         lost: false))
        }

        // Packs: every listed pack's trailer, every indexed pack's existence, and the data.
        summary.setAsideBefore = plan.setAside.count
        summary.packs = plan.listedPacks
        summary.indexFiles = plan.indexFiles.count
        let results = try checkPacks(repo, plan, cancellation: cancellation, progress: progress)
        for r in results where r.read {
            summary.packsRead += 1
            summary.chunksRead += r.chunksRead
            summary.bytesRead += r.size
        }
        summary.unindexedPacks = plan.packs.count { $0.listed && $0.entries.isEmpty }
        summary.unreferencedPacks = plan.packs.count { p in p.listed && !p.entries.contains { walk.chunks.contains($0.chunk) } }
        let liveMaps = Set(walk.maps.keys), livePages = Set(walk.pages.keys)
        summary.unreferencedDiskMaps = plan.diskMaps.count { Digest128(hex: $0.name).map { !liveMaps.contains($0) } ?? true }
        summary.unreferencedMapPages = plan.mapPages.count { Digest128(hex: $0.name).map { !livePages.contains($0) } ?? true }

        // Chunks whose damage needs mapping back through the disk maps.
        var needDamage = Set<ChunkID>()
        for r in results {
            for e in r.lost + r.unreadable + r.damaged.map({ $0.0 }) + r.others + r.disagree { needDamage.insert(e.chunk) }
        }
        let unindexed = walk.chunks.filter { repo.location(of: $0) == nil }
        needDamage.formUnion(unindexed)
        let damage = walk.damage(ofChunks: needDamage.intersection(walk.chunks), in: repo)
        func damageOf(_ entries: [IndexEntry]) -> [SnapshotDamage] { mergeDamage(entries.compactMap { damage[$0.chunk] }) }

        // Damage to objects no snapshot depends on is counted, not a finding: prune removes them.
        var toSetAside: [(chunk: ChunkID, pack: PackID, offset: UInt64)] = []
        for r in results {
            if let problem = r.problem {
                let unreadable = r.lost + r.disagree + r.unreadable
                let concerned = unreadable.isEmpty ? r.others : unreadable
                let d = damageOf(concerned)
                if d.isEmpty {
                    summary.unusedDamaged += 1
                } else {
                    // Unread for an I/O error is not known lost: a warning, and nothing set aside.
                    findings.append(CheckFinding(kind: .pack, object: "pack \(r.id)", problem: problem, lost: !(r.lost + r.disagree).isEmpty,
                                                 damage: d, setAside: !r.lost.isEmpty && options.setAside))
                }
                toSetAside += r.lost.map { ($0.chunk, $0.pack, $0.offset) }
            }
            for (e, error) in r.damaged {
                toSetAside.append((e.chunk, e.pack, e.offset))
                guard let d = damage[e.chunk], !d.isEmpty else {
                    summary.unusedDamaged += 1
                    continue
                }
                findings.append(CheckFinding(kind: .chunk, object: "chunk \(e.chunk) in pack \(e.pack)",
                                             problem: "\(why(error)); set aside: the next backup of the disks below stores it again",
                                             damage: d, setAside: options.setAside))
            }
        }

        // Referenced chunks that no index lists.
        if !unindexed.isEmpty {
            let asideChunks = Set(plan.setAside.map(\.chunk))
            var inTrailers: [ChunkID: PackID] = [:]
            for r in results { for e in r.trailer where unindexed.contains(e.id) { inTrailers[e.id] = r.id } }
            let findable = unindexed.filter { inTrailers[$0] != nil && !asideChunks.contains($0) }
            let damagedIndex = repo.damagedIndexFiles.keys.sorted()
            if !findable.isEmpty && damagedIndex.isEmpty {
                let packs = Set(findable.compactMap { inTrailers[$0] }).count
                findings.append(CheckFinding(kind: .index, object: "index",
                                             problem: "\(findable.count) chunks that snapshots need are in \(packs) packs but in no index file (an index file was lost); run `tessera repair index`",
                                             damage: mergeDamage(findable.compactMap { damage[$0] })))
            }
            for name in damagedIndex {
                let why = repo.damagedIndexFiles[name].map(why) ?? "damaged"
                findings.append(CheckFinding(kind: .index, object: "index file \(name)",
                                             problem: "\(why); its chunks are still in their packs: run `tessera repair index`",
                                             damage: mergeDamage(findable.compactMap { damage[$0] })))
            }
            for c in unindexed.sorted() where !findable.contains(c) {
                let problem = asideChunks.contains(c)
                    ? "its only copy was set aside as damaged; the next backup of the disks below stores it again (healing), or `tessera repair snapshots` lists what is lost"
                    : "missing: no index file and no pack holds it; the next backup of the disks below stores it again if the disk still holds it"
                findings.append(CheckFinding(kind: .chunk, object: "chunk \(c)", problem: problem, damage: damage[c] ?? []))
            }
        } else {
            for name in repo.damagedIndexFiles.keys.sorted() {
                let why = repo.damagedIndexFiles[name].map(why) ?? "damaged"
                findings.append(CheckFinding(kind: .index, object: "index file \(name)",
                                             problem: "\(why); every chunk it listed is indexed elsewhere too: run `tessera repair index` to replace it",
                                             lost: false))
            }
        }

        if options.setAside && !toSetAside.isEmpty {
            try repo.setChunksAside(toSetAside, reason: "check: damaged or lost")
            summary.setAsideNow = toSetAside.count
        }
        findings.sort { ($0.kind.rawValue, $0.object) < ($1.kind.rawValue, $1.object) }
        summary.findings = findings.count
        summary.seconds = Date().timeIntervalSince(started)
        return Report(findings: findings, summary: summary)
    }

    // MARK: - Structure: config, records, maps, pages

    private static func structureFindings(_ repo: Repository, _ walk: ReferenceWalk) -> [CheckFinding] {
        var findings: [CheckFinding] = []
        let mismatched = walk.records.filter { $0.chunkSize != repo.config.chunkSize }
        if !mismatched.isEmpty {
            findings.append(CheckFinding(
                kind: .config, object: "config",
                problem: "the config's chunk size \(repo.config.chunkSize) differs from the chunk size of \(mismatched.count) snapshots (the config was replaced?); restore the config from a copy of the repository",
                damage: mismatched.map { SnapshotDamage(snapshot: $0.id, disk: $0.diskName, ranges: [ByteRange(offset: 0, length: $0.diskSize)]) }.sorted()))
        }
        for (id, e) in walk.damagedRecords {
            findings.append(CheckFinding(kind: .snapshot, object: "snapshot \(id)",
                                         problem: "\(why(e)); the snapshot cannot be restored: `tessera repair snapshots --forget` removes it",
                                         damage: [SnapshotDamage(snapshot: id, disk: "?", ranges: [])]))
        }
        for r in walk.records {
            guard case .success(let info)? = walk.maps[r.diskMap] else { continue }
            if info.header.diskSize != r.diskSize || info.header.chunkSize != r.chunkSize {
                findings.append(CheckFinding(kind: .snapshot, object: "snapshot \(r.id)",
                                             problem: "the record says disk size \(r.diskSize) and chunk size \(r.chunkSize), its disk map \(r.diskMap.short)… says \(info.header.diskSize) and \(info.header.chunkSize)",
                                             damage: [SnapshotDamage(snapshot: r.id, disk: r.diskName, ranges: [])]))
            }
        }
        for (id, state) in walk.maps.sorted(by: { $0.key < $1.key }) {
            guard case .failure(let e) = state else { continue }
            findings.append(CheckFinding(kind: .diskMap, object: "disk map \(id)",
                                         problem: "\(why(e)); the snapshots below cannot be restored",
                                         damage: walk.damage(ofMap: id)))
        }
        for (id, state) in walk.pages.sorted(by: { $0.key < $1.key }) {
            guard case .failure(let e) = state else { continue }
            findings.append(CheckFinding(kind: .mapPage, object: "map page \(id)",
                                         problem: "\(why(e)); the ranges below cannot be restored",
                                         damage: walk.damage(ofPage: id)))
        }
        return findings
    }

    // MARK: - Packs

    struct PackResult: Sendable {
        var id: PackID
        var size: UInt64 = 0
        /// What is wrong with the pack as a whole (missing, truncated, trailer, hash), if anything.
        var problem: String?
        /// Indexed chunks that cannot be read at all (pack missing, past its end).
        var lost: [IndexEntry] = []
        /// Indexed chunks that read but whose pack is damaged elsewhere (trailer, hash).
        var others: [IndexEntry] = []
        /// Indexed chunks of a pack that an I/O error kept from being read (not set aside).
        var unreadable: [IndexEntry] = []
        /// Indexed chunks the trailer places elsewhere (the index may point at wrong bytes).
        var disagree: [IndexEntry] = []
        /// Indexed chunks that failed verification (read-data).
        var damaged: [(IndexEntry, RepositoryError)] = []
        var trailer: [PackEntry] = []
        var read = false
        var chunksRead = 0
    }

    private static func checkPacks(_ repo: Repository, _ plan: CheckPlan, cancellation: Cancellation?,
                                   progress: @escaping @Sendable (CheckProgress) -> Void) throws -> [PackResult] {
        let packs = plan.packs
        let total = plan.bytesToRead
        let next = Atomic<Int>(0)
        let done = Mutex<(packs: Int, bytes: UInt64)>((0, 0))
        let results = Mutex<[PackResult]>([])
        let workers = min(plan.options.workers, max(packs.count, 1))
        // Workers, not `forEach`: each keeps one decompression buffer for all its packs.
        try WorkerGroup.run(workers: workers, cancellation: cancellation) { _, stop in
            var buffer = [UInt8](repeating: 0, count: repo.config.chunkSize)
            while !stop.isSet {
                let i = next.add(1, ordering: .relaxed).oldValue
                guard i < packs.count else { return }
                let r = checkPack(repo, packs[i], buffer: &buffer)
                results.withLock { $0.append(r) }
                let p = done.withLock { d -> CheckProgress in
                    d.packs += 1
                    if r.read { d.bytes += r.size }
                    return CheckProgress(packsDone: d.packs, packsTotal: packs.count, bytesDone: d.bytes, bytesTotal: total)
                }
                progress(p)
            }
        }
        return results.withLock { $0 }.sorted { $0.id < $1.id }
    }

    private static func checkPack(_ repo: Repository, _ pack: CheckPlan.Pack, buffer: inout [UInt8]) -> PackResult {
        let (id, entries, readData, hasAside) = (pack.id, pack.entries, pack.readWhole, pack.hasSetAside)
        var r = PackResult(id: id)
        guard pack.listed else {
            r.problem = "missing (the index lists \(entries.count) chunks in it); the chunks are set aside so the next backup stores them again"
            r.lost = entries
            return r
        }
        let key = ObjectKey(.pack, id.hex)
        var bytes: [UInt8] = []
        do {
            r.size = try repo.store.size(key)
            if readData {
                bytes = try repo.store.get(key)
                r.read = true
                r.size = UInt64(bytes.count)
            }
        } catch let e as RepositoryError where e.code == .io {
            // An I/O error is not damage: the bytes may be fine once the storage recovers.
            // Setting the chunks aside would make good snapshots wait for a re-backup (or be
            // lost if the disk changed since), so nothing is set aside.
            r.problem = "cannot be read (\(e.message)); nothing was set aside: check the storage, then run check again"
            r.unreadable = entries
            return r
        } catch let e as RepositoryError {
            r.problem = "cannot be read (\(e.message)); check the storage"
            r.lost = entries
            return r
        } catch {
            r.problem = "cannot be read (\(error)); check the storage"
            r.lost = entries
            return r
        }
        var problems: [String] = []
        r.lost = entries.filter { $0.offset + UInt64($0.length) > r.size }
        if !r.lost.isEmpty {
            problems.append("truncated to \(r.size) bytes: \(r.lost.count) indexed chunks lie past its end and are set aside")
        }
        do {
            if readData {
                r.trailer = try trailer(fromWhole: bytes, id: id)
            } else {
                r.trailer = try PackScan.trailer(of: id, size: r.size, in: repo.store)
            }
        } catch let e as RepositoryError where e.code == .io {
            problems.append("its trailer cannot be read (\(e.message)); check the storage, then run check again")
        } catch let e as RepositoryError {
            if r.lost.isEmpty {
                problems.append("its trailer is damaged (\(why(e))); its chunks still read, but an index rebuild could not find them: run `tessera prune` to rewrite it")
            }
        } catch {
            problems.append("its trailer cannot be read: \(error)")
        }
        let readable = entries.filter { $0.offset + UInt64($0.length) <= r.size }
        if !r.trailer.isEmpty || (problems.isEmpty && !entries.isEmpty) {
            let listedAt = Dictionary(r.trailer.map { ($0.offset, $0) }, uniquingKeysWith: { a, _ in a })
            let disagree = readable.filter { e in
                guard let t = listedAt[e.offset] else { return true }
                return t.id != e.chunk || t.length != e.length
            }
            if !disagree.isEmpty {
                r.disagree = disagree
                problems.append("its trailer does not list \(disagree.count) chunks where the index places them (trailer or index damaged); run `tessera check --read-data`, then `tessera repair index`")
            }
        }
        if readData {
            for e in readable {
                do {
                    _ = try buffer.withUnsafeMutableBytes { buf in
                        try repo.codecs.withDecompressor { d in
                            try ObjectEnvelope.decode(.chunk, bytes, at: Int(e.offset), expectedID: e.chunk,
                                                      object: "chunk \(e.chunk) in pack \(id)", into: buf, decompressor: d)
                        }
                    }
                    r.chunksRead += 1
                } catch let error as RepositoryError {
                    r.damaged.append((e, error))
                } catch {
                    r.damaged.append((e, RepositoryError(.damaged, "\(error)")))
                }
            }
            // Damage outside every chunk (pack header, padding) shows only in the pack's hash.
            // Known damage (set-aside copies, damaged chunks) already explains a mismatch.
            if problems.isEmpty && r.damaged.isEmpty && !hasAside && XXH3.hash128(bytes) != id {
                problems.append("the file does not hash to its name (damaged outside its chunks, or swapped with another pack); its chunks verify: run `tessera prune` to rewrite it")
            }
        }
        if !problems.isEmpty {
            r.problem = problems.joined(separator: "; ")
            if r.lost.isEmpty { r.others = entries }
        }
        return r
    }

    /// The reason inside a `RepositoryError.damaged` message, without its advice.
    static func why(_ e: RepositoryError) -> String {
        var m = e.message
        if let r = m.range(of: "; run `") { m = String(m[..<r.lowerBound]) }
        if let object = e.object {
            let prefix = "\(object) is damaged: "
            if m.hasPrefix(prefix) { m = "damaged: " + m.dropFirst(prefix.count) }
        }
        return m
    }

    /// The trailer parsed out of a whole pack's bytes.
    private static func trailer(fromWhole bytes: [UInt8], id: PackID) throws -> [PackEntry] {
        let object = "pack \(id)"
        guard bytes.count >= PackFile.headerSize + PackFile.footerSize else {
            throw RepositoryError.damaged(object, "only \(bytes.count) bytes long (truncated)")
        }
        var f = ByteReader(bytes, offset: bytes.count - PackFile.footerSize)
        let trailerOffset: UInt64
        do {
            trailerOffset = try f.u64()
            guard try f.expect("TPAKEND1") else { throw RepositoryError.damaged(object, "footer magic missing (truncated?)") }
        } catch is ShortData {
            throw RepositoryError.damaged(object, "footer truncated")
        }
        guard trailerOffset >= UInt64(PackFile.headerSize), trailerOffset <= UInt64(bytes.count - PackFile.footerSize) else {
            throw RepositoryError.damaged(object, "trailer offset \(trailerOffset) out of range")
        }
        return try PackScan.parseTrailer(Array(bytes[Int(trailerOffset)...]), trailerOffset: trailerOffset, object: object)
    }
}

extension CheckFinding.Kind {
    /// The finding kind for an object kind (lock files and set-aside records have none of
    /// their own: they are the repository's bookkeeping, reported with the config).
    init(_ kind: ObjectKind) {
        switch kind {
        case .pack: self = .pack
        case .index: self = .index
        case .mapPage: self = .mapPage
        case .diskMap: self = .diskMap
        case .snapshot: self = .snapshot
        case .setAside: self = .chunk
        case .config, .lock: self = .config
        }
    }
}
