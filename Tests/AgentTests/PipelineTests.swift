@testable import Agent
import BackupRepository
import BlockIO
import Synchronization
import Testing
import TestSupport

/// A source of seeded bytes that logs every read and prefetch hint, in order.
final class RecordingSource: DiskSource {
    enum Event: Equatable { case read(UInt64), prefetch(UInt64) }
    let size: UInt64
    let log = Mutex<[Event]>([])
    var description: String { "recording source" }
    var allowsConcurrentReads: Bool { true }

    init(size: UInt64) { self.size = size }

    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws {
        log.withLock { $0.append(.read(offset)) }
        for i in 0..<buffer.count { buffer[i] = UInt8(truncatingIfNeeded: (offset + UInt64(i)) &* 2654435761 >> 13) }
    }

    func dataRanges(in range: ByteRange) throws -> [ByteRange] { [range] }

    func prefetch(_ range: ByteRange) {
        log.withLock { $0.append(.prefetch(range.offset)) }
    }
}

struct PipelineTests {
    /// The pipeline hints every segment exactly once, before reading it, and never more than
    /// `prefetchSegments` ahead of what it has read.
    @Test(arguments: [(UInt64(64 << 10), 3), (UInt64(4 << 20), 2)])
    func everySegmentIsPrefetchedOnceBeforeItsRead(segmentStride: UInt64, workers: Int) throws {
        let dir = try TemporaryDirectory("pipeline")
        let repository = try Repository.initialize(at: dir.path + "/repo")
        let writer = try repository.makeWriter()
        // Scattered one-chunk ranges (an incremental) or whole 4 MiB segments (a full).
        let count = 150
        let ranges = (0..<count).map { ByteRange(offset: UInt64($0) * 2 * segmentStride, length: segmentStride == 64 << 10 ? 65536 : segmentStride) }
        let size = ranges.last!.end
        let source = RecordingSource(size: size)
        let segments = ChunkPipeline.segments(for: ranges, chunkSize: 65536, diskSize: size)
        let pipeline = ChunkPipeline(source: source, repository: repository, writer: writer, chunkSize: 65536,
                                     workers: workers, counters: PipelineCounters())
        try pipeline.run(segments: segments, cancellation: nil) { _, _ in }
        writer.abandon()

        let log = source.log.withLock { $0 }
        var prefetchedAt: [UInt64: Int] = [:], readAt: [UInt64: Int] = [:]
        var reads = 0, tooFarAhead = false
        for (position, event) in log.enumerated() {
            switch event {
            case .prefetch(let o):
                #expect(prefetchedAt[o] == nil, "segment at \(o) prefetched twice")
                prefetchedAt[o] = position
                let index = segments.firstIndex { $0.offset == o } ?? -1
                if index - reads > ChunkPipeline.prefetchSegments + workers { tooFarAhead = true }
            case .read(let o):
                readAt[o] = position
                reads += 1
            }
        }
        #expect(Set(readAt.keys) == Set(segments.map(\.offset)))
        #expect(Set(prefetchedAt.keys) == Set(segments.map(\.offset)))
        let late = segments.filter { prefetchedAt[$0.offset]! > readAt[$0.offset]! }
        #expect(late.isEmpty, "read before its hint: \(late.prefix(3))")
        #expect(!tooFarAhead)
    }
}
