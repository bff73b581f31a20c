import Codecs
import Foundation

/// A restore point: the record written last, the one commit point of a backup.
public struct SnapshotRecord: Codable, Sendable, Equatable {
    /// How the backup found what to read.
    public enum Source: String, Codable, Sendable {
        case cbt, nbdBitmap = "nbd-bitmap", scan, full
    }

    public struct Stats: Codable, Sendable, Equatable {
        public var bytesRead: UInt64
        public var chunksNew: Int
        public var chunksReused: Int
        public var chunksZero: Int
        public var bytesStored: UInt64
        public var seconds: Double

        public init(bytesRead: UInt64 = 0, chunksNew: Int = 0, chunksReused: Int = 0, chunksZero: Int = 0,
                    bytesStored: UInt64 = 0, seconds: Double = 0) {
            self.bytesRead = bytesRead
            self.chunksNew = chunksNew
            self.chunksReused = chunksReused
            self.chunksZero = chunksZero
            self.bytesStored = bytesStored
            self.seconds = seconds
        }
    }

    /// Random 128-bit lowercase hex (32 digits); also the object's name.
    public var id: String
    public var diskName: String
    public var time: Date
    public var diskSize: UInt64
    public var chunkSize: Int
    /// The snapshot this one was made incrementally from, if any.
    public var parent: String?
    /// The change ID the data was taken at (e.g. `UUID/SEQ`), nil for a scan or full read.
    public var changeID: String?
    public var source: Source
    public var tags: [String]
    public var stats: Stats
    public var diskMap: DiskMapID
    /// The consistency group: snapshots of the disks of one VM taken at one instant share it.
    /// Optional; readers that do not know it lose nothing by ignoring it.
    public var group: String?

    public init(id: String = SnapshotRecord.newID(), diskName: String, time: Date = Date(), diskSize: UInt64, chunkSize: Int,
                parent: String? = nil, changeID: String? = nil, source: Source, tags: [String] = [], stats: Stats = Stats(),
                diskMap: DiskMapID, group: String? = nil) {
        self.id = id
        self.diskName = diskName
        self.time = time
        self.diskSize = diskSize
        self.chunkSize = chunkSize
        self.parent = parent
        self.changeID = changeID
        self.source = source
        self.tags = tags
        self.stats = stats
        self.diskMap = diskMap
        self.group = group
    }

    /// A fresh random snapshot ID.
    public static func newID() -> String { randomHexID() }

    enum CodingKeys: String, CodingKey {
        case id, diskName, time, diskSize, chunkSize, parent, changeID, source, tags, stats, diskMap, group
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        id = try c.decode(String.self, forKey: .id)
        diskName = try c.decode(String.self, forKey: .diskName)
        time = try c.decode(Date.self, forKey: .time)
        diskSize = try c.decode(UInt64.self, forKey: .diskSize)
        chunkSize = try c.decode(Int.self, forKey: .chunkSize)
        parent = try c.decodeIfPresent(String.self, forKey: .parent)
        changeID = try c.decodeIfPresent(String.self, forKey: .changeID)
        source = try c.decode(Source.self, forKey: .source)
        tags = try c.decode([String].self, forKey: .tags)
        stats = try c.decode(Stats.self, forKey: .stats)
        let hex = try c.decode(String.self, forKey: .diskMap)
        guard let d = Digest128(hex: hex) else {
            throw DecodingError.dataCorruptedError(forKey: .diskMap, in: c, debugDescription: "disk map ID \(hex) is not 32 hex digits")
        }
        diskMap = d
        group = try c.decodeIfPresent(String.self, forKey: .group)
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(id, forKey: .id)
        try c.encode(diskName, forKey: .diskName)
        try c.encode(time, forKey: .time)
        try c.encode(diskSize, forKey: .diskSize)
        try c.encode(chunkSize, forKey: .chunkSize)
        try c.encodeIfPresent(parent, forKey: .parent)
        try c.encodeIfPresent(changeID, forKey: .changeID)
        try c.encode(source, forKey: .source)
        try c.encode(tags, forKey: .tags)
        try c.encode(stats, forKey: .stats)
        try c.encode(diskMap.hex, forKey: .diskMap)
        try c.encodeIfPresent(group, forKey: .group)
    }
}
