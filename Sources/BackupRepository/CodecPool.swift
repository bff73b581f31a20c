import Codecs
import Synchronization

/// A zstd context owned by whoever took it from the pool (one thread at a time).
final class CompressorBox: @unchecked Sendable {
    let compressor: ZstdCompressor
    init(level: Int) { compressor = ZstdCompressor(level: level) }
}

final class DecompressorBox: @unchecked Sendable {
    let decompressor = ZstdDecompressor()
}

/// Hands out zstd contexts so many threads compress and decompress at once without ever
/// sharing a context (they are not thread-safe). The pool grows to the peak concurrency.
final class CodecPool: Sendable {
    let level: Int
    private let compressors = Mutex<[CompressorBox]>([])
    private let decompressors = Mutex<[DecompressorBox]>([])

    init(level: Int) { self.level = level }

    func withCompressor<R>(_ body: (borrowing ZstdCompressor) throws -> R) rethrows -> R {
        let box = compressors.withLock { $0.popLast() } ?? CompressorBox(level: level)
        defer { compressors.withLock { $0.append(box) } }
        return try body(box.compressor)
    }

    func withDecompressor<R>(_ body: (borrowing ZstdDecompressor) throws -> R) rethrows -> R {
        let box = decompressors.withLock { $0.popLast() } ?? DecompressorBox()
        defer { decompressors.withLock { $0.append(box) } }
        return try body(box.decompressor)
    }
}
