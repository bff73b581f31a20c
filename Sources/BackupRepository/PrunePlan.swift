import BlockIO
import Codecs

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

/// What prune knows before it changes anything, gathered read-only (`Pruner.inventory`):
/// every object and its size, and where the index places each live chunk.
public struct PruneInventory: Sendable, Equatable {
    /// A listed pack.
    public struct Pack: Sendable, Equatable {
        public var id: PackID
        public var size: UInt64
        /// The index entries that place a live chunk in this pack (the copy the index uses),
        /// in pack order.
        public var live: [IndexEntry]
        /// The pack holds a copy set aside as damaged: it is rewritten whatever its garbage,
        /// then moved to quarantine (for forensics) instead of deleted.
        public var hasSetAside: Bool

        public init(id: PackID, size: UInt64, live: [IndexEntry], hasSetAside: Bool = false) {
            self.id = id
            self.size = size
            self.live = live
            self.hasSetAside = hasSetAside
        }
    }

    /// An index file, disk map or map page, with its size; `live` when a snapshot needs it.
    public struct Object: Sendable, Equatable {
        public var key: ObjectKey
        public var size: UInt64
        public var live: Bool

        public init(key: ObjectKey, size: UInt64, live: Bool = true) {
            self.key = key
            self.size = size
            self.live = live
        }
    }

    public var snapshots = 0
    public var chunksLive = 0
    /// Every listed pack, sorted by ID.
    public var packs: [Pack] = []
    /// Live entries whose pack is not listed (missing: `check` reports it). They stay in the
    /// index; there is nothing to gain by dropping them.
    public var liveInMissingPacks: [IndexEntry] = []
    public var indexFiles: [Object] = []
    public var diskMaps: [Object] = []
    public var mapPages: [Object] = []
    /// Temp files of killed writers.
    public var leftovers: [String] = []

    public init() {}
}

/// What `prune` will do, made from an inventory alone, with no I/O: the dry run prints it
/// and stops; the run carries it out (`Pruner.execute`), so the dry run predicts the run.
///
/// The order the run follows, chosen so that a full file system is no obstacle and a kill at
/// any instant loses nothing:
/// 1. packs with no live chunk go first, since on a full disk only deleting makes room: an
///    interim index file naming every live chunk where it is now is made durable, the old
///    index files are deleted (durably), and only then the packs;
/// 2. then the packs worth rewriting: their live chunks are copied into new packs (made
///    durable), one index file naming every live chunk is made durable, the interim one is
///    deleted (durably), and only then the rewritten packs;
/// 3. disk maps and map pages no snapshot needs, and leftover temp files.
///
/// At every instant each index entry names an existing pack, a pack is deleted only when no
/// index file names it, and a rerun finishes the job (packs a killed run wrote that no index
/// names are garbage the rerun deletes in step 1).
public struct PrunePlan: Sendable, Equatable {
    /// A pack step 2 writes: the live entries copied into it, in order, and its size.
    public struct NewPack: Sendable, Equatable {
        /// Where each chunk is now (its source pack and offset).
        public var entries: [IndexEntry]
        public var size: UInt64
    }

    /// Packs with no live chunk (step 1).
    public var packsToDelete: [PackID] = []
    /// Packs rewritten in step 2: garbage at or over the threshold, or a set-aside copy inside.
    public var packsToRepack: [PackID] = []
    /// The packs step 2 writes, filled to the target size in the order of `packsToRepack`.
    public var newPacks: [NewPack] = []
    /// Live entries that stay where they are.
    public var kept: [IndexEntry] = []
    /// Packs deleted or rewritten that hold a set-aside copy: moved to quarantine.
    public var quarantined: Set<PackID> = []
    /// The index files there are before the run.
    public var indexFiles: [String] = []
    /// Step 1's index file (name and bytes), when there are packs to delete.
    public var interimIndex: IndexFileContents?
    public var diskMapsToDelete: [ObjectKey] = []
    public var mapPagesToDelete: [ObjectKey] = []
    public var leftovers: [String] = []
    /// The report the run gives when every chunk it copies verifies (a damaged live chunk
    /// found while copying keeps its pack whole, and the run says so).
    public var report = PruneReport()

    /// An encoded index file.
    public struct IndexFileContents: Sendable, Equatable {
        public var name: String
        public var bytes: [UInt8]
    }

    /// The live entries step 2 copies, in order.
    public var entriesToMove: [IndexEntry] { newPacks.flatMap(\.entries) }

    /// Plans a prune. Pure: the same inventory and options give the same plan.
    public static func make(_ inventory: PruneInventory, options: PruneOptions) -> PrunePlan {
        var plan = PrunePlan()
        var r = PruneReport()
        r.dryRun = options.dryRun
        r.snapshots = inventory.snapshots
        r.chunksLive = inventory.chunksLive

        var moving: [IndexEntry] = []
        var bytesRemoved: UInt64 = 0
        for pack in inventory.packs {
            if pack.live.isEmpty {
                plan.packsToDelete.append(pack.id)
            } else {
                // Garbage is what a rewrite would not copy: the pack's size beyond the smallest
                // pack holding just its live chunks. (Counting the header and trailer as garbage
                // made every small pack "20 % garbage" and rewrote it every night, forever.)
                let liveBytes = pack.live.reduce(UInt64(0)) { $0 + UInt64($1.length) }
                let needed = PackFile.size(envelopeBytes: liveBytes, count: pack.live.count)
                let garbage = pack.size > needed ? Double(pack.size - needed) / Double(max(pack.size, 1)) : 0
                guard garbage >= options.repackThreshold || pack.hasSetAside else {
                    plan.kept += pack.live
                    continue
                }
                plan.packsToRepack.append(pack.id)
                moving += pack.live
            }
            bytesRemoved += pack.size
            if pack.hasSetAside { plan.quarantined.insert(pack.id) }
        }
        plan.kept += inventory.liveInMissingPacks
        plan.newPacks = fill(moving, target: options.packTargetSize)

        r.packsDeleted = plan.packsToDelete.filter { !plan.quarantined.contains($0) }.count
        r.packsQuarantined = plan.quarantined.count
        r.packsRepacked = plan.packsToRepack.count
        r.packsKept = inventory.packs.count - plan.packsToDelete.count - plan.packsToRepack.count
        r.packsWritten = plan.newPacks.count
        r.chunksMoved = moving.count

        // The index: rewritten when any pack goes.
        plan.indexFiles = inventory.indexFiles.map(\.key.name)
        let indexBefore = inventory.indexFiles.reduce(UInt64(0)) { $0 + $1.size }
        var indexAfter = indexBefore
        if !plan.packsToDelete.isEmpty || !plan.packsToRepack.isEmpty {
            var present = plan.indexFiles
            if !plan.packsToDelete.isEmpty {
                let (name, bytes) = IndexFile.encode(plan.kept + moving)
                plan.interimIndex = IndexFileContents(name: name, bytes: bytes)
                r.indexFilesWritten += 1
                r.indexFilesDeleted += present.filter { $0 != name }.count
                present = [name]
            }
            if !plan.packsToRepack.isEmpty {
                // Its name depends on the new packs' names, known once they are written; it
                // names packs no other index file names, so it is a new file.
                r.indexFilesWritten += 1
                r.indexFilesDeleted += present.count
            }
            indexAfter = IndexFile.encodedSize(entries: plan.kept.count + moving.count)
        }

        plan.diskMapsToDelete = inventory.diskMaps.filter { !$0.live }.map(\.key)
        plan.mapPagesToDelete = inventory.mapPages.filter { !$0.live }.map(\.key)
        plan.leftovers = inventory.leftovers
        r.diskMapsDeleted = plan.diskMapsToDelete.count
        r.mapPagesDeleted = plan.mapPagesToDelete.count
        r.leftoversDeleted = plan.leftovers.count

        func total(_ objects: [PruneInventory.Object]) -> UInt64 { objects.reduce(0) { $0 + $1.size } }
        let packBytes = inventory.packs.reduce(UInt64(0)) { $0 + $1.size }
        r.bytesBefore = packBytes + indexBefore + total(inventory.diskMaps) + total(inventory.mapPages)
        r.bytesAfter = packBytes - bytesRemoved + plan.newPacks.reduce(0) { $0 + $1.size } + indexAfter
            + total(inventory.diskMaps.filter(\.live)) + total(inventory.mapPages.filter(\.live))
        plan.report = r
        return plan
    }

    /// Cuts the entries into packs as a writer fills them: a pack is sealed once it reaches
    /// `target` bytes.
    static func fill(_ entries: [IndexEntry], target: Int) -> [NewPack] {
        var packs: [NewPack] = []
        var current: [IndexEntry] = []
        var byteCount = PackFile.headerSize
        func seal() {
            guard !current.isEmpty else { return }
            let envelopes = UInt64(byteCount - PackFile.headerSize)
            packs.append(NewPack(entries: current, size: PackFile.size(envelopeBytes: envelopes, count: current.count)))
            current = []
            byteCount = PackFile.headerSize
        }
        for e in entries {
            current.append(e)
            byteCount += e.length
            if byteCount >= target { seal() }
        }
        seal()
        return packs
    }
}
