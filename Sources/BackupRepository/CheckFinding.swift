import BlockIO
import Codecs

/// One thing `check` found wrong, with what it damages.
///
/// Every finding names the object, says what is wrong and what to do, and lists which
/// snapshots and which of their disk byte ranges depend on the damaged object (each
/// damaged chunk is mapped back through every disk map that references it).
public struct CheckFinding: Sendable, Equatable, Codable {
    /// The kind of object that is damaged.
    public enum Kind: String, Sendable, Codable {
        case config, snapshot, diskMap = "disk-map", mapPage = "map-page", index, pack, chunk
    }

    public var kind: Kind
    /// The object, e.g. `chunk 77c1… in pack 3fa0…`, `pack 3fa0…`, `map page 9c1e…`.
    public var object: String
    /// What is wrong and what to do about it.
    public var problem: String
    /// True when the listed ranges cannot be read now (a restore of them fails). False when
    /// the object is damaged but the data still reads (a damaged pack trailer: only an
    /// index rebuild would suffer).
    public var lost: Bool
    /// Every snapshot that depends on the object, with the disk byte ranges concerned
    /// (empty ranges: the whole snapshot, its size unknown).
    public var damage: [SnapshotDamage]
    /// True when check set this chunk copy aside: the next backup stores it again.
    public var setAside: Bool

    public init(kind: Kind, object: String, problem: String, lost: Bool = true, damage: [SnapshotDamage] = [], setAside: Bool = false) {
        self.kind = kind
        self.object = object
        self.problem = problem
        self.lost = lost
        self.damage = damage
        self.setAside = setAside
    }

    /// The IDs of the snapshots concerned, sorted.
    public var snapshots: [String] { damage.map(\.snapshot).sorted() }
}

/// The part of one snapshot a damaged object concerns.
public struct SnapshotDamage: Sendable, Hashable, Codable, Comparable {
    public var snapshot: String
    public var disk: String
    /// Coalesced, sorted byte ranges of the disk; empty means the whole snapshot.
    public var ranges: [ByteRange]

    public init(snapshot: String, disk: String, ranges: [ByteRange]) {
        self.snapshot = snapshot
        self.disk = disk
        self.ranges = ranges
    }

    public static func < (a: SnapshotDamage, b: SnapshotDamage) -> Bool { a.snapshot < b.snapshot }

    enum CodingKeys: String, CodingKey { case snapshot, disk, ranges }
    struct Range: Codable { var offset: UInt64; var length: UInt64 }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        snapshot = try c.decode(String.self, forKey: .snapshot)
        disk = try c.decode(String.self, forKey: .disk)
        ranges = try c.decode([Range].self, forKey: .ranges).map { ByteRange(offset: $0.offset, length: $0.length) }
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(snapshot, forKey: .snapshot)
        try c.encode(disk, forKey: .disk)
        try c.encode(ranges.map { Range(offset: $0.offset, length: $0.length) }, forKey: .ranges)
    }
}

/// Which packs `check` reads whole (`--read-data`, `--read-data-subset`).
public enum DataSelection: Sendable, Equatable {
    /// Structure only: no chunk is read.
    case none
    /// Every pack.
    case all
    /// The packs whose ID, read as a fraction of 2^64 (its first 64 bits), is below
    /// `percent` / 100: deterministic, so the same N% is the same packs.
    case percent(Double)
    /// Slice `k` of `m` (1-based): the packs whose first 64 bits modulo `m` is `k - 1`.
    /// The `m` slices are disjoint and together cover every pack.
    case slice(Int, of: Int)

    /// Parses `N%` or `K/M`.
    public init?(subset: String) {
        if subset.hasSuffix("%"), let p = Double(subset.dropLast()), p > 0, p <= 100 {
            self = .percent(p)
            return
        }
        let parts = subset.split(separator: "/")
        if parts.count == 2, let k = Int(parts[0]), let m = Int(parts[1]), m >= 1, k >= 1, k <= m {
            self = .slice(k, of: m)
            return
        }
        return nil
    }

    /// Whether the pack is read.
    public func selects(_ pack: PackID) -> Bool {
        switch self {
        case .none: false
        case .all: true
        case .percent(let p): p >= 100 || Double(pack.high) < p / 100 * 18446744073709551616.0
        case .slice(let k, let m): pack.high % UInt64(m) == UInt64(k - 1)
        }
    }
}

/// What a check did, besides its findings.
public struct CheckSummary: Sendable, Equatable, Codable {
    public var snapshots = 0
    public var diskMaps = 0
    public var mapPages = 0
    public var packs = 0
    public var indexFiles = 0
    public var chunksReferenced = 0
    /// Packs read whole and chunks decompressed and re-hashed (`--read-data`).
    public var packsRead = 0
    public var chunksRead = 0
    public var bytesRead: UInt64 = 0
    /// Objects nobody refers to: not errors (prune removes them).
    public var unreferencedPacks = 0
    public var unreferencedDiskMaps = 0
    public var unreferencedMapPages = 0
    /// Packs no index file lists (leftovers of killed backups, or a lost index).
    public var unindexedPacks = 0
    /// Damaged objects no snapshot depends on (garbage): counted, not findings.
    public var unusedDamaged = 0
    /// Chunk copies set aside before this check (known damage, already healed or healing).
    public var setAsideBefore = 0
    /// Chunk copies this check set aside.
    public var setAsideNow = 0
    public var findings = 0
    public var seconds: Double = 0

    public init() {}
}

/// Progress of a check: packs and bytes done of the planned total.
public struct CheckProgress: Sendable {
    public var packsDone: Int
    public var packsTotal: Int
    public var bytesDone: UInt64
    public var bytesTotal: UInt64
}
