import BackupRepository
import BlockIO
import Codecs
import Foundation
import Synchronization
import Workers

public enum RestoreFormat: String, Sendable, CaseIterable {
    case raw, vmdk
}

public struct RestoreSettings: Sendable {
    /// Go on past damaged chunks (their ranges are listed and read as zeroes) instead of stopping.
    public var keepGoing = false
    public var workers = ProcessInfo.processInfo.activeProcessorCount

    public init() {}
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

/// What a restore does, from the disk map alone: which chunks are fetched and which are
/// holes, in batches of neighbouring chunks (read from the packs together, written with as
/// few writes as possible). Pure, so it is tested without files.
public struct RestorePlan: Sendable, Equatable {
    public let diskSize: UInt64
    public let chunkSize: UInt64
    /// Per chunk: the chunk to fetch, or nil for an all-zero chunk (a hole).
    public let chunks: [ChunkID?]
    public let batchSize: Int

    /// 384 KiB of disk per unit of work at 64 KiB chunks: a batch is decompressed, hashed
    /// and written while it is still in the core's L2 cache (512 KiB here), and the two
    /// workers' writes, which ext4 serializes on the file's inode lock, stay short. Measured
    /// on a 4 GiB image (BENCHMARKS.md): 32 chunks (2 MiB) spent 5-7 s of system time copying
    /// into the page cache and spinning on that lock, 6 chunks 2 s; wall 6.6-7.9 s vs 4.1-4.8 s.
    public static let defaultBatchSize = 6

    public init(map: DiskMap, batchSize: Int = RestorePlan.defaultBatchSize) {
        diskSize = map.diskSize
        chunkSize = UInt64(map.chunkSize)
        chunks = (0..<map.count).map { map[$0] }
        self.batchSize = max(1, batchSize)
    }

    public var batchCount: Int { (chunks.count + batchSize - 1) / batchSize }
    public func batch(_ k: Int) -> Range<Int> { (k * batchSize)..<min((k + 1) * batchSize, chunks.count) }
    public var zeroChunks: Int { chunks.count { $0 == nil } }
    public func byteRange(ofChunk i: Int) -> ByteRange {
        let offset = UInt64(i) * chunkSize
        return ByteRange(offset: offset, length: min(chunkSize, diskSize - offset))
    }
}

/// Restores one snapshot in one pass over its disk map: chunks fetched, decompressed and
/// re-hashed in parallel (`WorkerGroup`), zero chunks left as holes, the target synced and
/// put in place (`RestoreTarget.commit`) before success. A failure or a cancellation
/// discards what was staged: the target stays as it was.
public struct RestoreJob: Sendable {
    public let repository: Repository
    public let snapshot: SnapshotRecord
    public let plan: RestorePlan
    public let settings: RestoreSettings
    public let cancellation: Cancellation?

    public init(repository: Repository, snapshot: SnapshotRecord, map: DiskMap, settings: RestoreSettings = RestoreSettings(),
                cancellation: Cancellation? = nil) {
        self.repository = repository
        self.snapshot = snapshot
        self.plan = RestorePlan(map: map)
        self.settings = settings
        self.cancellation = cancellation
    }

    /// Restores into `target` and puts it in place.
    /// - Throws: `AgentError.damaged` for a damaged chunk (without `keepGoing`), `.target`
    ///   for the target's I/O, `Cancelled`.
    public func run(into target: RestoreTarget, progress: @escaping @Sendable (BackupProgress) -> Void = { _ in }) throws -> RestoreSummary {
        let started = Date()
        HeapTuning.applyOnce()
        guard target.image.size == plan.diskSize else {
            target.discard()
            throw AgentError(.target, "\(target.path) is \(target.image.size) bytes but snapshot \(snapshot.id) is \(plan.diskSize) bytes")
        }
        let counters = RestoreCounters()
        let inPlace = target.mode == .update
        do {
            try WorkerGroup.run(workers: settings.workers, cancellation: cancellation) { _, stop in
                var buffers = Buffers(chunkSize: Int(plan.chunkSize), batch: plan.batchSize, inPlace: inPlace)
                while !stop.isSet {
                    let k = counters.nextBatch.add(1, ordering: .relaxed).oldValue
                    guard k < plan.batchCount else { return }
                    try restoreBatch(k, into: target.image, inPlace: inPlace, buffers: &buffers, counters: counters)
                    progress(BackupProgress(bytesDone: plan.byteRange(ofChunk: plan.batch(k).upperBound - 1).end,
                                            bytesPlanned: plan.diskSize, seconds: Date().timeIntervalSince(started)))
                }
            }
            try target.commit()
        } catch let e as BlockIOError {
            target.discard()
            throw AgentError(.target, "writing the restore target failed: \(e.message)", cause: e)
        } catch {
            target.discard()
            throw error
        }
        return RestoreSummary(snapshot: snapshot.id, disk: snapshot.diskName, target: target.path, format: target.format.rawValue,
                              diskSize: plan.diskSize, bytesWritten: counters.bytesWritten.load(ordering: .relaxed),
                              chunksWritten: counters.written.load(ordering: .relaxed), chunksZero: plan.zeroChunks,
                              chunksUnchanged: counters.unchanged.load(ordering: .relaxed),
                              seconds: Date().timeIntervalSince(started),
                              damaged: counters.damaged.withLock { $0 }.sorted { $0.offset < $1.offset })
    }

    /// One worker's buffers: a batch of chunks, and one chunk of the existing target.
    private struct Buffers {
        var batch: [UInt8]
        var existing: [UInt8]
        init(chunkSize: Int, batch: Int, inPlace: Bool) {
            self.batch = [UInt8](repeating: 0, count: batch * chunkSize)
            existing = [UInt8](repeating: 0, count: inPlace ? chunkSize : 0)
        }
    }

    /// Writes `bytes` at `offset` except its all-zero 4 KiB blocks (`offset` is chunk-aligned,
    /// so the blocks are the file system's): one write per run of blocks that hold data.
    static func writeSkippingZeroBlocks(_ bytes: UnsafeRawBufferPointer, at offset: UInt64, to target: DiskImage) throws {
        let block = 4096
        var start: Int?
        var at = 0
        while at < bytes.count {
            let end = min(at + block, bytes.count)
            let zero = isZeroBlock(UnsafeRawBufferPointer(rebasing: bytes[at..<end]))
            if zero, let s = start {
                try target.write(UnsafeRawBufferPointer(rebasing: bytes[s..<at]), at: offset + UInt64(s))
                start = nil
            } else if !zero && start == nil {
                start = at
            }
            at = end
        }
        if let s = start { try target.write(UnsafeRawBufferPointer(rebasing: bytes[s...]), at: offset + UInt64(s)) }
    }

    /// Data blocks almost always have a non-zero first word: only zero blocks are scanned whole.
    private static func isZeroBlock(_ bytes: UnsafeRawBufferPointer) -> Bool {
        if bytes.count >= 8, bytes.loadUnaligned(as: UInt64.self) != 0 { return false }
        return ChunkPipeline.isAllZero(bytes)
    }

    private func restoreBatch(_ k: Int, into target: DiskImage, inPlace: Bool, buffers: inout Buffers,
                              counters: RestoreCounters) throws {
        let chunks = plan.batch(k)
        let slot = Int(plan.chunkSize)
        // What each chunk of the batch needs: nil = nothing to fetch.
        var fetch: [ChunkID?] = []
        fetch.reserveCapacity(chunks.count)
        for i in chunks {
            let id = plan.chunks[i]
            if inPlace {
                // Only chunks that differ from what the target holds are written; a fresh
                // target already reads zeroes, an existing one may need a hole punched.
                let range = plan.byteRange(ofChunk: i)
                let (hash, isZero) = try buffers.existing.withUnsafeMutableBytes { raw in
                    let current = UnsafeMutableRawBufferPointer(rebasing: raw[0..<Int(range.length)])
                    try target.read(into: current, at: range.offset)
                    return (XXH3.hash128(UnsafeRawBufferPointer(current)), ChunkPipeline.isAllZero(UnsafeRawBufferPointer(current)))
                }
                if let id, hash == id {
                    counters.unchanged.add(1, ordering: .relaxed)
                    fetch.append(nil)
                    continue
                }
                if id == nil, !isZero { try target.punchHole(range) }
            }
            fetch.append(id)
        }
        let results = buffers.batch.withUnsafeMutableBytes { repository.readChunks(fetch, into: $0) }
        // Runs of consecutive fetched chunks go out with one write each.
        var runStart: Int?
        func writeRun(upTo end: Int) throws {
            guard let r = runStart else { return }
            runStart = nil
            let offset = plan.byteRange(ofChunk: chunks.lowerBound + r).offset
            let bytes = Int(plan.byteRange(ofChunk: chunks.lowerBound + end - 1).end - offset)
            try buffers.batch.withUnsafeBytes { raw in
                let run = UnsafeRawBufferPointer(rebasing: raw[(r * slot)..<(r * slot + bytes)])
                // A fresh target reads zeroes everywhere already: its all-zero 4 KiB blocks stay
                // holes, so a chunk holding one small write is as sparse as on the source. In
                // place, the target's old bytes must be overwritten, zeroes included.
                if inPlace { try target.write(run, at: offset) } else { try Self.writeSkippingZeroBlocks(run, at: offset, to: target) }
            }
            counters.written.add(end - r, ordering: .relaxed)
            counters.bytesWritten.add(UInt64(bytes), ordering: .relaxed)
        }
        for (j, id) in fetch.enumerated() {
            guard let id else { try writeRun(upTo: j); continue }
            let range = plan.byteRange(ofChunk: chunks.lowerBound + j)
            switch results[j] {
            case .success(let n):
                guard n == Int(range.length) else {
                    throw AgentError(.damaged, "snapshot \(snapshot.id): chunk \(id.hex) holds \(n) bytes, the map expects \(range.length) at \(range)")
                }
                if runStart == nil { runStart = j }
            case .failure(let error):
                try writeRun(upTo: j)
                guard settings.keepGoing else {
                    throw AgentError(.damaged, "snapshot \(snapshot.id) of disk \(snapshot.diskName): chunk \(id.hex) for bytes \(range) cannot be restored: \(error). Run `tessera check --read-data` to see what else is damaged", cause: error)
                }
                counters.damaged.withLock { $0.append(DamagedRange(offset: range.offset, length: range.length, chunk: id.hex, error: "\(error)")) }
            }
        }
        try writeRun(upTo: fetch.count)
        // Let the disk write this batch while the next ones decompress, so the final fsync
        // has little left to wait for.
        let first = plan.byteRange(ofChunk: chunks.lowerBound).offset
        target.startWriteback(ByteRange(offset: first, length: plan.byteRange(ofChunk: chunks.upperBound - 1).end - first))
    }
}

/// Counters shared by a restore's workers.
private final class RestoreCounters: Sendable {
    let nextBatch = Atomic<Int>(0)
    let written = Atomic<Int>(0)
    let unchanged = Atomic<Int>(0)
    let bytesWritten = Atomic<UInt64>(0)
    let damaged = Mutex<[DamagedRange]>([])
}
