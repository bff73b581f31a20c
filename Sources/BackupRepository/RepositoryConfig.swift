import Foundation

/// The repository's `config` object: format version, feature flags, identity, chunking.
public struct RepositoryConfig: Codable, Sendable, Equatable {
    /// Always "tessera-repository": tells our config from any other file named config.
    public var format: String
    /// The format version; a reader refuses a newer one.
    public var version: Int
    /// Mandatory features: a reader that does not know one of them must refuse the repository.
    public var features: [String]
    /// Optional features: a reader may ignore the ones it does not know.
    public var optionalFeatures: [String]
    /// Random 128-bit hex ID of this repository.
    public var id: String
    /// Chunk size in bytes (power of two, 4 KiB … 4 MiB).
    public var chunkSize: Int
    /// zstd level used for chunks and map pages.
    public var compressionLevel: Int
    public var created: Date

    public static let formatName = "tessera-repository"
    public static let currentVersion = 1
    /// The mandatory features this build reads.
    public static let knownFeatures: Set<String> = ["chunk-envelope-v1", "packs-v1", "paged-disk-maps-v1"]

    public init(id: String, chunkSize: Int, compressionLevel: Int, created: Date) {
        format = Self.formatName
        version = Self.currentVersion
        features = Self.knownFeatures.sorted()
        optionalFeatures = []
        self.id = id
        self.chunkSize = chunkSize
        self.compressionLevel = compressionLevel
        self.created = created
    }

    enum CodingKeys: String, CodingKey {
        case format, version, features, optionalFeatures, id, chunkSize, compressionLevel, created
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        format = try c.decode(String.self, forKey: .format)
        version = try c.decode(Int.self, forKey: .version)
        features = try c.decode([String].self, forKey: .features)
        optionalFeatures = try c.decodeIfPresent([String].self, forKey: .optionalFeatures) ?? []
        id = try c.decode(String.self, forKey: .id)
        chunkSize = try c.decode(Int.self, forKey: .chunkSize)
        compressionLevel = try c.decode(Int.self, forKey: .compressionLevel)
        created = try c.decode(Date.self, forKey: .created)
    }
}
