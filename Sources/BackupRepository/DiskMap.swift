import BlockIO
import Codecs

/// The synthetic full: for every chunk position of a disk, the chunk ID or "zero".
///
/// Entry `i` covers bytes `[i * chunkSize, min((i + 1) * chunkSize, diskSize))`; only the
/// last chunk may be short. `nil` means the chunk is all zeroes (never stored).
/// Held as 16 bytes per entry (the zero digest marks zero chunks).
public struct DiskMap: Sendable, Equatable {
    public let diskSize: UInt64
    public let chunkSize: Int
    var ids: [ChunkID]

    /// Chunk sizes the repository accepts: powers of two from 4 KiB to 4 MiB.
    public static func isValidChunkSize(_ size: Int) -> Bool {
        size >= 4096 && size <= 4 << 20 && size & (size - 1) == 0
    }

    /// ceil(diskSize / chunkSize), without overflow for any size.
    static func chunkCount(diskSize: UInt64, chunkSize: Int) -> UInt64 {
        diskSize / UInt64(chunkSize) + (diskSize % UInt64(chunkSize) == 0 ? 0 : 1)
    }

    /// A map of an all-zero disk.
    /// - Throws: `.invalidArgument` for a chunk size that is not a power of two in 4 KiB … 4 MiB.
    public init(diskSize: UInt64, chunkSize: Int) throws {
        guard Self.isValidChunkSize(chunkSize) else {
            throw RepositoryError(.invalidArgument, "chunk size \(chunkSize) is not a power of two between 4 KiB and 4 MiB")
        }
        let count = Self.chunkCount(diskSize: diskSize, chunkSize: chunkSize)
        guard count <= UInt64(Int32.max) else {
            throw RepositoryError(.invalidArgument, "a disk of \(diskSize) bytes has too many chunks at chunk size \(chunkSize); use a larger chunk size")
        }
        self.diskSize = diskSize
        self.chunkSize = chunkSize
        self.ids = [ChunkID](repeating: .zero, count: Int(count))
    }

    init(diskSize: UInt64, chunkSize: Int, ids: [ChunkID]) {
        self.diskSize = diskSize
        self.chunkSize = chunkSize
        self.ids = ids
    }

    /// A copy of `parent` for an incremental backup, resized to `newSize`.
    ///
    /// Entries past the new end are dropped, new entries are zero. When the size changes,
    /// the chunk that held the old end (partial before, or partial now) is set to zero: its
    /// old ID describes a different length, so the caller must read and store it again.
    public init(copying parent: DiskMap, resizedTo newSize: UInt64) throws {
        try self.init(diskSize: newSize, chunkSize: parent.chunkSize)
        let keep = min(ids.count, parent.ids.count)
        ids.replaceSubrange(0..<keep, with: parent.ids[0..<keep])
        if newSize != parent.diskSize {
            let cs = UInt64(chunkSize)
            for boundary in [parent.diskSize, newSize] where boundary % cs != 0 {
                let i = Int(boundary / cs)
                if i < ids.count { ids[i] = .zero }
            }
        }
    }

    /// The number of chunk positions.
    public var count: Int { ids.count }

    /// The chunk at position `index`, or nil for an all-zero chunk.
    public subscript(index: Int) -> ChunkID? {
        get { ids[index] == .zero ? nil : ids[index] }
        set { ids[index] = newValue ?? .zero }
    }

    /// The bytes of the disk that entry `index` covers.
    public func byteRange(ofChunk index: Int) -> ByteRange {
        let start = UInt64(index) * UInt64(chunkSize)
        return ByteRange(offset: start, length: min(UInt64(chunkSize), diskSize - start))
    }

    /// How many entries name a stored chunk (not zero).
    public var nonZeroCount: Int { ids.reduce(0) { $0 + ($1 == .zero ? 0 : 1) } }
}
