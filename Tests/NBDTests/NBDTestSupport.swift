import BlockIO
import Foundation
import Logging
import NIOCore
@testable import NBD
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

/// Makes a sparse file of `size` bytes with `data` written at the given offsets.
func makeImage(_ path: String, size: UInt64, writes: [(UInt64, [UInt8])] = []) throws {
    let f = try BlockFile(path: path, mode: .createReadWrite)
    try f.truncate(to: size)
    for (offset, bytes) in writes { try f.write(bytes, at: offset) }
}

struct ToolFailure: Error, CustomStringConvertible { var description: String }

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

/// Runs a tool and fails with its output when it exits non-zero.
@discardableResult
func run(_ program: String, _ arguments: [String], input: Data? = nil, environment: [String: String]? = nil) throws -> String {
    let r = try runCommand(program, arguments, environment: environment, input: input)
    guard r.succeeded else {
        throw ToolFailure(description: "\(program) \(arguments.joined(separator: " ")) exited \(r.status): \(r.stderr)\(r.stdout)")
    }
    return r.stdout
}

extension ByteBuffer {
    init(bytes: [UInt8]) {
        self = ByteBufferAllocator().buffer(capacity: bytes.count)
        self.writeBytes(bytes)
    }
}
