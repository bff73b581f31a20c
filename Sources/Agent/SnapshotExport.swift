import BackupRepository
import BlockIO
import Codecs
import Logging
import NBD
import Synchronization

/// One snapshot served read-only over NBD: instant restore. A VM boots from it, or
/// `qemu-img convert` / `nbdcopy` copy it, without a restore to a flat file first.
///
/// Every read fetches its chunks through the repository (checksummed, decompressed,
/// re-hashed against their ID), so a damaged chunk is an `EIO` for the bytes it covers,
/// never wrong data. Zero chunks read as zeroes and are reported as holes in
/// `base:allocation`, so sparse-aware clients skip them. The repository stays locked
/// (shared) while the export exists, so a prune cannot delete chunks under a client.
public final class SnapshotExport: NBDExport {
    public let info: NBDExportInfo
    public let record: SnapshotRecord
    private let repository: Repository
    private let map: DiskMap
    private let lock: RepositoryAccess.Releasable
    private let chunkSize: Int
    /// Recently read chunks: NBD clients read a 64 KiB chunk in several smaller requests.
    private let cache = Mutex(ChunkCache())
    static let cachedChunks = 64

    private struct ChunkCache {
        var chunks: [Int: [UInt8]] = [:]
        var order: [Int] = []
    }

    /// - Parameters:
    ///   - snapshot: an ID, a unique prefix, or `latest` (with `disk`).
    ///   - exportName: the NBD export name; the snapshot's disk name when nil.
    ///   - locking: a shared lock (none on a read-only repository, with a warning), or none.
    ///   - logger: told, at `.warning`, when the export runs without the lock it was meant to take.
    public init(repositoryPath: String, snapshot: String, disk: String?, exportName: String?,
                locking: ReadLocking = .shared,
                logger: Logger = Logger(label: "tessera.serve", factory: { _ in SwiftLogNoOpLogHandler() })) throws {
        repository = try RepositoryAccess.open(repositoryPath)
        lock = try RepositoryAccess.lockForReading(repository, locking, logger: logger)
        do {
            record = try RepositoryAccess.resolve(repository, snapshot, disk: disk)
            map = try RepositoryAccess.readMap(repository, record)
        } catch {
            lock.release()
            throw error
        }
        chunkSize = record.chunkSize
        info = NBDExportInfo(name: exportName ?? record.diskName,
                             description: "snapshot \(record.id) of disk \(record.diskName), read-only",
                             size: record.diskSize, readOnly: true, canTrim: false, canWriteZeroes: false,
                             canFlush: false, canFUA: false, canMultiConn: true, metaContexts: ["base:allocation"],
                             preferredBlockSize: UInt32(record.chunkSize))
    }

    /// One export per disk of a consistency group (a VM at one instant), each named by its disk.
    public static func group(repositoryPath: String, group: String, locking: ReadLocking = .shared,
                             logger: Logger = Logger(label: "tessera.serve", factory: { _ in SwiftLogNoOpLogHandler() })) throws -> [SnapshotExport] {
        let records = try RepositoryAccess.resolveGroup(try RepositoryAccess.open(repositoryPath), group)
        var exports: [SnapshotExport] = []
        do {
            for record in records {
                exports.append(try SnapshotExport(repositoryPath: repositoryPath, snapshot: record.id, disk: nil, exportName: nil,
                                                  locking: locking, logger: logger))
            }
        } catch {
            for e in exports { e.close() }
            throw error
        }
        return exports
    }

    /// Releases the repository lock; reads fail afterwards.
    public func close() {
        lock.release()
    }

    public func read(offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        var done = 0
        while done < buffer.count {
            let at = offset + UInt64(done)
            let index = Int(at / UInt64(chunkSize))
            let within = Int(at % UInt64(chunkSize))
            let n = min(buffer.count - done, chunkSize - within)
            let piece = UnsafeMutableRawBufferPointer(rebasing: buffer[done..<(done + n)])
            if map[index] == nil {
                piece.initializeMemory(as: UInt8.self, repeating: 0)
            } else {
                let chunk = try self.chunk(index)
                guard within + n <= chunk.count else {
                    throw NBDError(.io, "chunk \(index) of snapshot \(record.id) holds \(chunk.count) bytes, the disk map expects more")
                }
                chunk.withUnsafeBytes { piece.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[within..<(within + n)])) }
            }
            done += n
        }
    }

    private func chunk(_ index: Int) throws -> [UInt8] {
        if let hit = cache.withLock({ $0.chunks[index] }) { return hit }
        guard let id = map[index] else { return [] }
        let bytes: [UInt8]
        do {
            bytes = try repository.readChunk(id)
        } catch {
            let start = UInt64(index) * UInt64(chunkSize)
            throw NBDError(.io, "snapshot \(record.id): chunk \(id.hex) for bytes \(start)+\(chunkSize) cannot be read: \(error); run `tessera check --read-data`")
        }
        cache.withLock { c in
            if c.chunks.updateValue(bytes, forKey: index) == nil { c.order.append(index) }
            if c.order.count > Self.cachedChunks { c.chunks[c.order.removeFirst()] = nil }
        }
        return bytes
    }

    public func write(offset: UInt64, data: UnsafeRawBufferPointer, fua: Bool) throws {
        throw NBDError(.permission, "snapshot \(record.id) is served read-only")
    }

    public func trim(offset: UInt64, length: UInt32, fua: Bool) throws {
        throw NBDError(.permission, "snapshot \(record.id) is served read-only")
    }

    public func writeZeroes(offset: UInt64, length: UInt32, noHole: Bool, fua: Bool) throws {
        throw NBDError(.permission, "snapshot \(record.id) is served read-only")
    }

    public func flush() throws {}

    public func blockStatus(context: String, offset: UInt64, length: UInt32) throws -> [NBDBlockStatusExtent] {
        guard context == "base:allocation" else { throw NBDError(.invalid, "no meta context \(context) on a snapshot export") }
        let range = ByteRange(offset: offset, length: UInt64(length))
        var data: [ByteRange] = []
        let size = UInt64(chunkSize)
        var index = Int(offset / size)
        while UInt64(index) * size < range.end {
            if map[index] != nil {
                let start = UInt64(index) * size
                data.append(ByteRange(offset: start, length: min(size, record.diskSize - start)))
            }
            index += 1
        }
        // Chunks that hold data are data; zero chunks are holes that read as zeroes.
        return FileExport.allocationExtents(data: data, in: range)
    }
}
