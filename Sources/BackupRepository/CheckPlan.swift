import BlockIO
import Codecs

/// What `check` sees before it reads anything: the store's listings (with pack sizes) and
/// where the index places each chunk it uses. Gathered by `RepositoryChecker.inventory`,
/// read-only; tests make one by hand.
public struct CheckInventory: Sendable, Equatable {
    /// Every snapshot record listed.
    public var snapshots: [String] = []
    /// Every disk map and map page listed (the walk tells which are referenced).
    public var diskMaps: [ObjectKey] = []
    public var mapPages: [ObjectKey] = []
    /// Every index file listed.
    public var indexFiles: [String] = []
    /// Every listed pack and its size in bytes.
    public var packSizes: [PackID: UInt64] = [:]
    /// The index entries the in-memory index uses (one copy of each chunk, set-aside copies
    /// excluded), by pack: a pack named here but not listed is missing.
    public var indexed: [PackID: [IndexEntry]] = [:]
    /// Chunk copies recorded as set aside (damaged), as (chunk, pack).
    public var setAside: [SetAsideRecord] = []

    public init() {}
}

/// A chunk copy recorded as set aside: this chunk, in this pack, is damaged.
public struct SetAsideRecord: Sendable, Hashable {
    public var chunk: ChunkID
    public var pack: PackID

    public init(chunk: ChunkID, pack: PackID) {
        self.chunk = chunk
        self.pack = pack
    }
}

/// What a check will read, made from an inventory alone, with no I/O: a dry run prints it
/// and stops; `RepositoryChecker.execute` carries it out, reading exactly what it says.
///
/// Always: every listed snapshot record, the disk map each names and that map's pages (the
/// structure), and every pack's trailer (a pack the index names but the store does not list
/// is missing). With `readData`, the packs it selects are read whole and every chunk in them
/// is decompressed and re-hashed; the slices of `--read-data-subset K/M` for K = 1…M are
/// disjoint and together read every pack once.
public struct CheckPlan: Sendable, Equatable {
    /// One pack, as the check will treat it.
    public struct Pack: Sendable, Equatable {
        public var id: PackID
        /// Listed by the store; false for a pack the index names that is not there (missing).
        public var listed: Bool
        /// Its size (0 when not listed).
        public var size: UInt64
        /// The index entries that place a chunk in use in this pack, in pack order.
        public var entries: [IndexEntry]
        /// The pack holds a copy set aside as damaged (its hash is then expected to differ).
        public var hasSetAside: Bool
        /// Read whole, every chunk re-hashed; otherwise only its footer and trailer are read.
        public var readWhole: Bool
    }

    public var options: CheckOptions
    /// The snapshot records read, each with its disk map and pages.
    public var snapshots: [String]
    /// Listed disk maps and map pages (those no snapshot reads are counted as unreferenced).
    public var diskMaps: [ObjectKey]
    public var mapPages: [ObjectKey]
    public var indexFiles: [String]
    /// Every pack listed or named by the index, sorted by ID.
    public var packs: [Pack]
    public var setAside: [SetAsideRecord]

    /// Plans a check of everything `inventory` lists.
    public static func make(_ inventory: CheckInventory, options: CheckOptions) -> CheckPlan {
        let withAside = Set(inventory.setAside.map(\.pack))
        let ids = Set(inventory.packSizes.keys).union(inventory.indexed.keys).sorted()
        let packs = ids.map { id in
            let size = inventory.packSizes[id]
            return Pack(id: id, listed: size != nil, size: size ?? 0, entries: inventory.indexed[id] ?? [],
                        hasSetAside: withAside.contains(id), readWhole: size != nil && options.readData.selects(id))
        }
        return CheckPlan(options: options, snapshots: inventory.snapshots.sorted(), diskMaps: inventory.diskMaps,
                         mapPages: inventory.mapPages, indexFiles: inventory.indexFiles.sorted(), packs: packs,
                         setAside: inventory.setAside)
    }

    /// The packs read whole, in ID order.
    public var packsToRead: [PackID] { packs.filter(\.readWhole).map(\.id) }
    /// The bytes read whole (what the progress counts).
    public var bytesToRead: UInt64 { packs.filter(\.readWhole).reduce(0) { $0 + $1.size } }
    /// Packs the index names that the store does not list.
    public var missingPacks: [PackID] { packs.filter { !$0.listed }.map(\.id) }
    public var listedPacks: Int { packs.count { $0.listed } }
}
