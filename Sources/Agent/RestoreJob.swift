import BackupRepository
import BlockIO
import Codecs
import Foundation
import Synchronization

public enum RestoreFormat: String, Sendable, CaseIterable {
    case raw, vmdk
}

public struct RestoreOptions: Sendable {
    public var repositoryPath: String
    /// A snapshot id, a unique prefix of one, or `latest` (with `disk`).
    public var snapshot: String
    public var disk: String?
    public var target: String
    public var format: RestoreFormat = .raw
    /// Write only the chunks that differ from what the existing target holds.
    public var onlyChanged = false
    /// Overwrite an existing non-empty target.
    public var force = false
    /// Go on past damaged chunks (their ranges are listed) instead of stopping.
    public var keepGoing = false
    public var workers = ProcessInfo.processInfo.activeProcessorCount
    /// A shared lock (none on a read-only repository, with a warning), or none (`--no-lock`).
    public var locking = ReadLocking.shared

    public init(repositoryPath: String, snapshot: String, target: String) {
        self.repositoryPath = repositoryPath
        self.snapshot = snapshot
        self.target = target
    }
}

public struct DamagedRange: Codable, Sendable, Equatable {
    public var offset: UInt64
    public var length: UInt64
    public var chunk: String
    public var error: String
}

public struct RestoreSummary: Codable, Sendable {
    public var type = "summary"
    public var snapshot: String
    public var disk: String
    public var target: String
    public var format: String
    public var diskSize: UInt64
    public var bytesWritten: UInt64
    public var chunksWritten: Int
    public var chunksZero: Int
    public var chunksUnchanged: Int
    public var seconds: Double
    public var damaged: [DamagedRange]

    enum CodingKeys: String, CodingKey {
        case type, snapshot, disk, target, format, seconds, damaged
        case diskSize = "disk_size", bytesWritten = "bytes_written", chunksWritten = "chunks_written"
        case chunksZero = "chunks_zero", chunksUnchanged = "chunks_unchanged"
    }
}

/// Restores one snapshot in one pass over its disk map: chunks fetched, decompressed and
/// re-hashed in parallel, zero chunks left as holes, fsync before success.
public struct RestoreJob: Sendable {
    public let options: RestoreOptions
    /// Chunks per unit of work: read from the packs together and written with as few
    /// writes as possible (2 MiB of disk at 64 KiB chunks, per worker).
    static let batch = 32

    public init(options: RestoreOptions) { self.options = options }

    public func run(log: @escaping @Sendable (String) -> Void = { _ in },
                    progress: @escaping @Sendable (BackupProgress) -> Void = { _ in }) throws -> RestoreSummary {
        let started = Date()
        HeapTuning.applyOnce()
        let repository = try RepositoryAccess.open(options.repositoryPath)
        let lock = try RepositoryAccess.lockForReading(repository, options.locking, warn: log)
        defer { lock.release() }
        let record = try RepositoryAccess.resolve(repository, options.snapshot, disk: options.disk)
        let map = try RepositoryAccess.readMap(repository, record)
        let size = record.diskSize
        let chunkSize = UInt64(record.chunkSize)
        let target = try openTarget(size: size)

        let chunkCount = RepositoryAccess.count(map)
        let next = Atomic<Int>(0)
        let written = Atomic<Int>(0), zero = Atomic<Int>(0), unchanged = Atomic<Int>(0)
        let bytesWritten = Atomic<UInt64>(0)
        let damaged = Mutex<[DamagedRange]>([])
        let failure = Mutex<(any Error)?>(nil)
        let group = DispatchGroup()
        let fresh = !options.onlyChanged
        let slot = Int(chunkSize)
        for _ in 0..<max(1, options.workers) {
            group.enter()
            Thread {
                defer { group.leave() }
                var buffer = [UInt8](repeating: 0, count: Self.batch * slot)
                var existing = [UInt8](repeating: 0, count: fresh ? 0 : slot)
                while failure.withLock({ $0 == nil }) {
                    let first = next.add(Self.batch, ordering: .relaxed).oldValue
                    if first >= chunkCount { return }
                    let end = min(first + Self.batch, chunkCount)
                    do {
                        // What each chunk of the batch needs: nil = nothing to fetch.
                        var fetch: [ChunkID?] = []
                        fetch.reserveCapacity(end - first)
                        for i in first..<end {
                            let offset = UInt64(i) * chunkSize
                            let length = Int(min(chunkSize, size - offset))
                            let id = RepositoryAccess.get(map, i)
                            if id == nil { zero.add(1, ordering: .relaxed) }
                            if !fresh {
                                try existing.withUnsafeMutableBytes { try target.read(into: UnsafeMutableRawBufferPointer(rebasing: $0[0..<length]), at: offset) }
                                let (hash, isZero) = existing.withUnsafeBytes { all in
                                    let current = UnsafeRawBufferPointer(rebasing: all[0..<length])
                                    return (XXH3.hash128(current), ChunkPipeline.isAllZero(current))
                                }
                                if let id, hash == id {
                                    unchanged.add(1, ordering: .relaxed)
                                    fetch.append(nil)
                                    continue
                                }
                                // A fresh sparse target already reads zeroes: only here may a hole be needed.
                                if id == nil, !isZero {
                                    try target.punchHole(ByteRange(offset: offset, length: UInt64(length)))
                                }
                            }
                            fetch.append(id)
                        }
                        let results = buffer.withUnsafeMutableBytes { repository.readChunks(fetch, into: $0) }
                        // Write runs of consecutive fetched chunks with one write each.
                        var runStart: Int? = nil
                        func flush(upTo k: Int) throws {
                            guard let r = runStart else { return }
                            runStart = nil
                            let offset = UInt64(first + r) * chunkSize
                            let bytes = Int(min(UInt64(k - r) * chunkSize, size - offset))
                            try buffer.withUnsafeBytes { try target.write(UnsafeRawBufferPointer(rebasing: $0[(r * slot)..<(r * slot + bytes)]), at: offset) }
                            written.add(k - r, ordering: .relaxed)
                            bytesWritten.add(UInt64(bytes), ordering: .relaxed)
                        }
                        for (k, id) in fetch.enumerated() {
                            guard let id else { try flush(upTo: k); continue }
                            let offset = UInt64(first + k) * chunkSize
                            let length = Int(min(chunkSize, size - offset))
                            let range = ByteRange(offset: offset, length: UInt64(length))
                            switch results[k] {
                            case .success(let n):
                                guard n == length else {
                                    throw AgentError(.damaged, "snapshot \(record.id): chunk \(id.hex) holds \(n) bytes, the map expects \(length) at \(range)")
                                }
                                if runStart == nil { runStart = k }
                            case .failure(let error):
                                try flush(upTo: k)
                                guard options.keepGoing else {
                                    throw AgentError(.damaged, "snapshot \(record.id) of disk \(record.diskName): chunk \(id.hex) for bytes \(range) cannot be restored: \(error). Run `tessera check --read-data`; use --keep-going to restore the rest")
                                }
                                damaged.withLock { $0.append(DamagedRange(offset: offset, length: UInt64(length), chunk: id.hex, error: "\(error)")) }
                            }
                        }
                        try flush(upTo: fetch.count)
                        // Let the disk write this batch while the next ones decompress, so
                        // the final fsync has little left to wait for.
                        target.startWriteback(ByteRange(offset: UInt64(first) * chunkSize,
                                                        length: min(UInt64(end - first) * chunkSize, size - UInt64(first) * chunkSize)))
                    } catch {
                        failure.withLock { if $0 == nil { $0 = error } }
                        return
                    }
                    progress(BackupProgress(bytesDone: UInt64(end) * chunkSize, bytesPlanned: size,
                                            seconds: Date().timeIntervalSince(started)))
                }
            }.start()
        }
        group.wait()
        if let error = failure.withLock({ $0 }) {
            if let e = error as? BlockIOError {
                throw AgentError(.target, "writing the restore target failed: \(e.message)")
            }
            throw error
        }
        do {
            try target.sync()
        } catch let e as BlockIOError {
            throw AgentError(.target, "making the restore target durable failed: \(e.message)")
        }
        let list = damaged.withLock { $0 }.sorted { $0.offset < $1.offset }
        if !list.isEmpty { log("\(list.count) damaged chunks were not restored; their ranges read as zeroes") }
        return RestoreSummary(snapshot: record.id, disk: record.diskName, target: options.target, format: options.format.rawValue,
                              diskSize: size, bytesWritten: bytesWritten.load(ordering: .relaxed),
                              chunksWritten: written.load(ordering: .relaxed), chunksZero: zero.load(ordering: .relaxed),
                              chunksUnchanged: unchanged.load(ordering: .relaxed),
                              seconds: Date().timeIntervalSince(started), damaged: list)
    }

    /// Opens or creates the target, refusing to overwrite a non-empty one unless asked.
    private func openTarget(size: UInt64) throws -> DiskImage {
        let exists = DurableFile.exists(options.target)
        do {
            if options.onlyChanged {
                guard exists else {
                    throw AgentError(.target, "--only-changed restores into an existing disk, but \(options.target) does not exist")
                }
                let image = try DiskImage.open(path: options.target, writable: true)
                guard image.size == size else {
                    throw AgentError(.target, "\(options.target) is \(image.size) bytes but the snapshot is \(size) bytes; restore without --only-changed (with --force) instead")
                }
                return image
            }
            if exists {
                let current = try BlockFile(path: options.target, mode: .readOnly).size()
                if current > 0 && !options.force {
                    throw AgentError(.target, "\(options.target) exists and is not empty; use --force to overwrite it or --only-changed to update it in place")
                }
            }
            switch options.format {
            case .raw:
                if exists {
                    let f = try BlockFile(path: options.target, mode: .readWrite)
                    try f.truncate(to: 0)
                }
                return try DiskImage.createRaw(path: options.target, size: size)
            case .vmdk:
                return try DiskImage.createVMDK(descriptorPath: options.target, size: size)
            }
        } catch let e as BlockIOError {
            throw AgentError(.target, "cannot prepare the restore target: \(e.message)")
        }
    }
}

/// `tessera diff`: the byte ranges whose content differs between two snapshots.
public enum SnapshotDiff {
    public static func ranges(repositoryPath: String, _ a: String, _ b: String, disk: String?, locking: ReadLocking = .shared,
                              warn: (String) -> Void = { _ in }) throws -> (String, String, [ByteRange]) {
        let repository = try RepositoryAccess.open(repositoryPath)
        let lock = try RepositoryAccess.lockForReading(repository, locking, warn: warn)
        defer { lock.release() }
        let ra = try RepositoryAccess.resolve(repository, a, disk: disk)
        let rb = try RepositoryAccess.resolve(repository, b, disk: disk)
        let ma = try RepositoryAccess.readMap(repository, ra)
        let mb = try RepositoryAccess.readMap(repository, rb)
        guard ra.chunkSize == rb.chunkSize else {
            throw AgentError(.invalidArgument, "snapshots \(ra.id) and \(rb.id) use different chunk sizes; compare restored images instead")
        }
        let chunk = UInt64(ra.chunkSize)
        var out: [ByteRange] = []
        let common = min(RepositoryAccess.count(ma), RepositoryAccess.count(mb))
        for i in 0..<common where RepositoryAccess.get(ma, i) != RepositoryAccess.get(mb, i) {
            let start = UInt64(i) * chunk
            out.append(ByteRange(offset: start, length: min(chunk, min(ra.diskSize, rb.diskSize) - start)))
        }
        let small = min(ra.diskSize, rb.diskSize), large = max(ra.diskSize, rb.diskSize)
        if large > small { out.append(ByteRange(offset: small, length: large - small)) }
        return (ra.id, rb.id, out.coalesced())
    }
}
