// The only file that imports libzstd.
internal import CZstd

/// An error from libzstd, with the library's own explanation.
public struct ZstdError: Error, CustomStringConvertible, Sendable {
    public let code: Int
    public let message: String
    public var description: String { "zstd: \(message)" }

    init(_ code: Int) {
        self.code = code
        self.message = String(cString: ZSTD_getErrorName(code))
    }

    init(message: String) {
        self.code = 0
        self.message = message
    }
}

public enum Zstd {
    /// Wraps ZSTD_compressBound: the largest compressed size for `count` input bytes.
    public static func compressBound(_ count: Int) -> Int { ZSTD_compressBound(count) }

    /// The version of the linked library, for reports.
    public static var libraryVersion: String { String(cString: ZSTD_versionString()) }

    /// Levels the library accepts (negative levels are the "fast" ones).
    public static var levelRange: ClosedRange<Int> { Int(ZSTD_minCLevel())...Int(ZSTD_maxCLevel()) }
}

/// A compression context. Owned by one thread at a time; reused across chunks
/// because creating a context per chunk costs more than compressing a small chunk.
public struct ZstdCompressor: ~Copyable {
    private let context: OpaquePointer
    public let level: Int

    /// Wraps ZSTD_createCCtx.
    public init(level: Int) {
        guard let c = ZSTD_createCCtx() else { fatalError("ZSTD_createCCtx: out of memory") }
        context = c
        self.level = level
    }

    deinit { ZSTD_freeCCtx(context) }

    /// Wraps ZSTD_compressCCtx. Returns the number of bytes written to `destination`.
    public func compress(_ source: UnsafeRawBufferPointer, into destination: UnsafeMutableRawBufferPointer) throws(ZstdError) -> Int {
        let n = ZSTD_compressCCtx(context, destination.baseAddress, destination.count,
                                  source.baseAddress, source.count, Int32(level))
        if ZSTD_isError(n) != 0 { throw ZstdError(n) }
        return n
    }

    /// Compresses into a new array.
    public func compress(_ source: UnsafeRawBufferPointer) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: Zstd.compressBound(source.count))
        let n = try out.withUnsafeMutableBytes { try compress(source, into: $0) }
        out.removeLast(out.count - n)
        return out
    }
}

/// A decompression context, reused like `ZstdCompressor`.
public struct ZstdDecompressor: ~Copyable {
    private let context: OpaquePointer

    /// Wraps ZSTD_createDCtx.
    public init() {
        guard let d = ZSTD_createDCtx() else { fatalError("ZSTD_createDCtx: out of memory") }
        context = d
    }

    deinit { ZSTD_freeDCtx(context) }

    /// Wraps ZSTD_decompressDCtx. Returns the number of bytes produced; a frame that
    /// would produce more than `destination.count` bytes is an error, never an overflow.
    public func decompress(_ source: UnsafeRawBufferPointer, into destination: UnsafeMutableRawBufferPointer) throws(ZstdError) -> Int {
        let n = ZSTD_decompressDCtx(context, destination.baseAddress, destination.count,
                                    source.baseAddress, source.count)
        if ZSTD_isError(n) != 0 { throw ZstdError(n) }
        return n
    }
}
