import BackupRepository
import BlockIO
import Codecs
import Foundation
import Synchronization
import Workers

/// What the pipeline decided for one chunk.
public enum ChunkOutcome: Sendable, Equatable {
    case zero
    case reused(ChunkID)
    case stored(ChunkID, storedBytes: UInt64)

    var id: ChunkID? {
        switch self {
        case .zero: return nil
        case .reused(let id), .stored(let id, _): return id
        }
    }
}

/// Counters shared by the pipeline's threads and read by the progress reporter.
public final class PipelineCounters: Sendable {
    public let bytesRead = Atomic<UInt64>(0)
    public let bytesPlanned = Atomic<UInt64>(0)
    public let chunksNew = Atomic<Int>(0)
    public let chunksReused = Atomic<Int>(0)
    public let chunksZero = Atomic<Int>(0)
    public let bytesStored = Atomic<UInt64>(0)
    public init() {}
}

/// Reads aligned segments of a disk, cuts them into chunks, and for each chunk: detects
/// zeroes, hashes (XXH3-128), looks it up, compresses and stores the new ones.
///
/// Every worker thread reads its own segment and then does the CPU work, so reading one
/// segment overlaps with hashing and compressing others; memory is bounded by
/// `workers × segmentSize`. The segments just ahead of the workers are prefetched (up to
/// `prefetchBytes` or `prefetchSegments`), so reads mostly find the page cache filled, and
/// an incremental's scattered blocks go to the disk as many requests at once. A source that
/// cannot be read concurrently (one NBD connection) serialises its reads internally while
/// the CPU work stays parallel.
struct ChunkPipeline {
    static let segmentSize: UInt64 = 4 << 20
    static let prefetchBytes: UInt64 = 32 << 20
    static let prefetchSegments = 64

    let source: any DiskSource
    let repository: Repository
    let writer: RepositoryWriter
    let chunkSize: UInt64
    let workers: Int
    let counters: PipelineCounters

    /// Turns byte ranges into chunk-aligned segments of at most `segmentSize`, clipped at
    /// the end of the disk, in disk order, without overlaps.
    static func segments(for ranges: [ByteRange], chunkSize: UInt64, diskSize: UInt64) -> [ByteRange] {
        let aligned = ranges.map { $0.alignedOutward(to: chunkSize, clippedAt: diskSize) }.coalesced()
        var out: [ByteRange] = []
        let step = max(segmentSize / chunkSize, 1) * chunkSize
        for r in aligned {
            var at = r.offset
            while at < r.end {
                let n = min(step, r.end - at)
                out.append(ByteRange(offset: at, length: n))
                at += n
            }
        }
        return out
    }

    /// `ranges` minus `holes` (both sorted and coalesced).
    static func subtract(_ holes: [ByteRange], from ranges: [ByteRange]) -> [ByteRange] {
        var out: [ByteRange] = []
        for r in ranges {
            var at = r.offset
            for h in holes where h.end > at && h.offset < r.end {
                if h.offset > at { out.append(ByteRange(offset: at, length: h.offset - at)) }
                at = max(at, h.end)
            }
            if at < r.end { out.append(ByteRange(offset: at, length: r.end - at)) }
        }
        return out
    }

    /// Processes `segments` and calls `record(chunkIndex, outcome)` for every chunk (from
    /// worker threads; the callee synchronises).
    func run(segments: [ByteRange], cancellation: Cancellation?, record: @escaping @Sendable (Int, ChunkOutcome) -> Void) throws {
        let threadCount = max(1, min(workers, segments.count))
        // An incremental's segments are mostly one chunk: size the buffers to the largest
        // segment, not to `segmentSize`, so a small night does not hold workers × 4 MiB.
        let bufferSize = Int(max(segments.map(\.length).max() ?? 0, chunkSize))
        // Claims the next segment and moves the prefetch window [i, end) along: at most
        // prefetchSegments segments and prefetchBytes. Hints are issued under the lock, so a
        // segment's hint always precedes its claim (and read) by another worker.
        let cursor = Mutex<(next: Int, prefetched: Int)>((0, 0))
        let claim: @Sendable () -> Int? = { [source] in
            cursor.withLock { c in
                let i = c.next
                guard i < segments.count else { return nil }
                c.next += 1
                var end = i, bytes: UInt64 = 0
                while end < segments.count, end - i < Self.prefetchSegments, bytes < Self.prefetchBytes {
                    bytes += segments[end].length
                    end += 1
                }
                for k in max(c.prefetched, i)..<max(end, c.prefetched) { source.prefetch(segments[k]) }
                c.prefetched = max(end, c.prefetched)
                return i
            }
        }
        try WorkerGroup.run(workers: threadCount, cancellation: cancellation) { [self] _, stop in
            var buffer = [UInt8](repeating: 0, count: bufferSize)
            while !stop.isSet {
                guard let i = claim() else { return }
                try process(segments[i], buffer: &buffer, record: record)
            }
        }
    }

    private func process(_ segment: ByteRange, buffer: inout [UInt8], record: (Int, ChunkOutcome) -> Void) throws {
        let count = Int(segment.length)
        try buffer.withUnsafeMutableBytes { raw in
            let window = UnsafeMutableRawBufferPointer(rebasing: raw[0..<count])
            do {
                try source.read(into: window, at: segment.offset)
            } catch let e as AgentError {
                throw e
            } catch {
                throw AgentError(.source, "reading \(source.description) at \(segment) failed: \(error)", cause: error)
            }
        }
        counters.bytesRead.add(UInt64(count), ordering: .relaxed)
        var at = 0
        while at < count {
            let n = min(Int(chunkSize), count - at)
            let chunkIndex = Int((segment.offset + UInt64(at)) / chunkSize)
            let outcome: ChunkOutcome = try buffer.withUnsafeBytes { raw in
                let chunk = UnsafeRawBufferPointer(rebasing: raw[at..<(at + n)])
                if ChunkPipeline.isAllZero(chunk) { return .zero }
                let id = XXH3.hash128(chunk)
                if repository.contains(id) { return .reused(id) }
                switch try writer.store(chunk: chunk, id: id) {
                case .new(let stored): return .stored(id, storedBytes: UInt64(stored))
                case .duplicate: return .reused(id)
                case .zero: return .zero
                }
            }
            switch outcome {
            case .zero: counters.chunksZero.add(1, ordering: .relaxed)
            case .reused: counters.chunksReused.add(1, ordering: .relaxed)
            case .stored(_, let bytes):
                counters.chunksNew.add(1, ordering: .relaxed)
                counters.bytesStored.add(bytes, ordering: .relaxed)
            }
            record(chunkIndex, outcome)
            at += n
        }
    }

    /// True when every byte is zero (checked a word at a time).
    static func isAllZero(_ bytes: UnsafeRawBufferPointer) -> Bool {
        guard let base = bytes.baseAddress else { return true }
        let words = bytes.count / 8
        var acc: UInt64 = 0
        for i in 0..<words {
            acc |= base.loadUnaligned(fromByteOffset: i * 8, as: UInt64.self)
            if i & 511 == 511 && acc != 0 { return false }
        }
        if acc != 0 { return false }
        for i in (words * 8)..<bytes.count where base.load(fromByteOffset: i, as: UInt8.self) != 0 { return false }
        return true
    }
}
