import BlockIO
import Foundation
import Logging
import NIOCore
@testable import NBD
import Synchronization
import TestSupport

/// A file-backed export plus a fake dirty bitmap context, for tests that need
/// `qemu:dirty-bitmap:NAME` without the change tracker.
final class BitmapFileExport: NBDExport {
    let base: FileExport
    let bitmapName: String
    /// Dirty byte ranges, each a whole number of `granularity` blocks.
    let dirty: [ByteRange]
    let info: NBDExportInfo

    init(base: FileExport, bitmapName: String, dirty: [ByteRange]) {
        self.base = base
        self.bitmapName = bitmapName
        self.dirty = dirty.coalesced()
        var info = base.info
        info.metaContexts.append("qemu:dirty-bitmap:\(bitmapName)")
        self.info = info
    }

    func read(offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws { try base.read(offset: offset, into: buffer) }
    func write(offset: UInt64, data: UnsafeRawBufferPointer, fua: Bool) throws { try base.write(offset: offset, data: data, fua: fua) }
    func trim(offset: UInt64, length: UInt32, fua: Bool) throws { try base.trim(offset: offset, length: length, fua: fua) }
    func writeZeroes(offset: UInt64, length: UInt32, noHole: Bool, fua: Bool) throws {
        try base.writeZeroes(offset: offset, length: length, noHole: noHole, fua: fua)
    }
    func flush() throws { try base.flush() }

    func blockStatus(context: String, offset: UInt64, length: UInt32) throws -> [NBDBlockStatusExtent] {
        guard context == "qemu:dirty-bitmap:\(bitmapName)" else {
            return try base.blockStatus(context: context, offset: offset, length: length)
        }
        // Same shape as base:allocation: "data" ranges are the dirty ones, flag 1 = dirty.
        let range = ByteRange(offset: offset, length: UInt64(length))
        return FileExport.allocationExtents(data: dirty, in: range).map {
            NBDBlockStatusExtent(length: $0.length, flags: $0.flags == 0 ? 1 : 0)
        }
    }
}

/// A running server over a Unix socket in a fresh temporary directory.
final class TestServer: @unchecked Sendable {
    let directory: TemporaryDirectory
    let server: NBDServer
    let socketPath: String

    init(exports: [any NBDExport], directory: TemporaryDirectory) async throws {
        self.directory = directory
        socketPath = directory.file("nbd.sock")
        var logger = Logger(label: "nbd-test")
        logger.logLevel = ProcessInfo.processInfo.environment["TESSERA_NBD_LOG"] == nil ? .critical : .debug
        server = NBDServer(provider: NBDExportSet(exports), logger: logger, threads: 4)
        try await server.start(unixSocket: socketPath)
    }

    func uri(_ export: String = "") -> String { "nbd+unix:///\(export)?socket=\(socketPath)" }

    func stop() async throws { try await server.shutdown() }
}

/// Starts a server for `exports`, runs `body`, and always shuts the server down.
func withServer<T>(_ exports: [any NBDExport], in directory: TemporaryDirectory,
                   _ body: (TestServer) async throws -> T) async throws -> T {
    let server = try await TestServer(exports: exports, directory: directory)
    do {
        let result = try await body(server)
        try await server.stop()
        return result
    } catch {
        try? await server.stop()
        throw error
    }
}

extension ByteBuffer {
    init(bytes: [UInt8]) {
        self = ByteBufferAllocator().buffer(capacity: bytes.count)
        self.writeBytes(bytes)
    }
}

/// An in-memory export with optional injected failures, for tests that need no file.
final class MemoryExport: NBDExport {
    let info: NBDExportInfo
    private let bytes: Mutex<[UInt8]>
    /// Every call throws this, when set (fault injection).
    let failure: NBDError?

    init(info: NBDExportInfo, failure: NBDError? = nil) {
        self.info = info
        bytes = Mutex([UInt8](repeating: 0, count: Int(info.size)))
        self.failure = failure
    }

    convenience init(name: String, size: UInt64, readOnly: Bool = false, contexts: [String] = ["base:allocation"],
                     failure: NBDError? = nil) {
        self.init(info: NBDExportInfo(name: name, description: "memory \(name)", size: size, readOnly: readOnly,
                                      metaContexts: contexts), failure: failure)
    }

    var contents: [UInt8] { bytes.withLock { $0 } }

    func read(offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        if let failure { throw failure }
        bytes.withLock { b in
            b.withUnsafeBytes { src in buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: src[Int(offset)..<Int(offset) + buffer.count])) }
        }
    }

    func write(offset: UInt64, data: UnsafeRawBufferPointer, fua: Bool) throws {
        if let failure { throw failure }
        bytes.withLock { b in b.replaceSubrange(Int(offset)..<Int(offset) + data.count, with: data) }
    }

    func trim(offset: UInt64, length: UInt32, fua: Bool) throws {
        try writeZeroes(offset: offset, length: length, noHole: false, fua: fua)
    }

    func writeZeroes(offset: UInt64, length: UInt32, noHole: Bool, fua: Bool) throws {
        if let failure { throw failure }
        bytes.withLock { b in
            for i in Int(offset)..<Int(offset) + Int(length) { b[i] = 0 }
        }
    }

    func flush() throws { if let failure { throw failure } }

    /// Every context reports 4 KiB extents alternating flags 0 and 1 (a fixed, checkable pattern).
    func blockStatus(context: String, offset: UInt64, length: UInt32) throws -> [NBDBlockStatusExtent] {
        if let failure { throw failure }
        var out: [NBDBlockStatusExtent] = []
        var at = offset
        let end = offset + UInt64(length)
        while at < end {
            let next = min((at / 4096 + 1) * 4096, end)
            out.append(NBDBlockStatusExtent(length: UInt32(next - at), flags: UInt32((at / 4096) % 2)))
            at = next
        }
        return out
    }
}

/// Option replies decoded from the handshake's output, for assertions.
struct OptionReply: Equatable {
    var option: UInt32
    var type: UInt32
    var data: [UInt8]

    static func parseAll(_ buffer: ByteBuffer) -> [OptionReply]? {
        var b = buffer
        var out: [OptionReply] = []
        while b.readableBytes > 0 {
            guard let (magic, option, type, length) = b.readMultipleIntegers(as: (UInt64, UInt32, UInt32, UInt32).self),
                  magic == 0x0003_E889_0455_65A9, let data = b.readBytes(length: Int(length)) else { return nil }
            out.append(OptionReply(option: option, type: type, data: data))
        }
        return out
    }

    var string: String { String(decoding: data, as: UTF8.self) }
}

/// Client-side encoders for handshake messages.
enum ClientMessage {
    static func flags(_ f: UInt32 = 3) -> [UInt8] {
        var b = ByteBufferAllocator().buffer(capacity: 4)
        b.writeInteger(f)
        return Array(b.readableBytesView)
    }

    static func option(_ option: UInt32, _ data: [UInt8] = []) -> [UInt8] {
        var b = ByteBufferAllocator().buffer(capacity: 16 + data.count)
        b.writeMultipleIntegers(0x4948_4156_454F_5054 as UInt64, option, UInt32(data.count))
        b.writeBytes(data)
        return Array(b.readableBytesView)
    }

    static func string(_ s: String) -> [UInt8] {
        var b = ByteBufferAllocator().buffer(capacity: 4 + s.utf8.count)
        b.writeInteger(UInt32(s.utf8.count))
        b.writeString(s)
        return Array(b.readableBytesView)
    }

    static func go(_ name: String, info: [UInt16] = []) -> [UInt8] {
        var b = ByteBufferAllocator().buffer(capacity: 64)
        b.writeBytes(string(name))
        b.writeInteger(UInt16(info.count))
        for i in info { b.writeInteger(i) }
        return Array(b.readableBytesView)
    }

    static func meta(_ name: String, _ queries: [String]) -> [UInt8] {
        var b = ByteBufferAllocator().buffer(capacity: 64)
        b.writeBytes(string(name))
        b.writeInteger(UInt32(queries.count))
        for q in queries { b.writeBytes(string(q)) }
        return Array(b.readableBytesView)
    }

    static func request(type: UInt16, flags: UInt16 = 0, cookie: UInt64 = 1, offset: UInt64 = 0, length: UInt32 = 0,
                        payload: [UInt8]? = nil, magic: UInt32 = 0x2560_9513) -> [UInt8] {
        var b = ByteBufferAllocator().buffer(capacity: 28 + (payload?.count ?? 0))
        b.writeMultipleIntegers(magic, flags, type, cookie, offset, length)
        if let payload { b.writeBytes(payload) }
        return Array(b.readableBytesView)
    }
}
