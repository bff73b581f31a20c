// The fuzz targets: one function per parser that reads outside bytes. The libFuzzer driver
// (Tools/fuzz-targets/Driver, TESSERA_FUZZ=1 only) runs one of them; the regression test
// (Tests/FuzzRegressionTests) replays Fixtures/fuzz/<name>/* through the same functions.
import BackupRepository
import BlockIO
import ChangeTracking
import Codecs
import Filter
import Foundation
import NBD
import NIOCore
import Nightly

/// Every target, by the name TESSERA_FUZZ_TARGET and Fixtures/fuzz/<name> use.
package let fuzzTargets: [String: @Sendable ([UInt8]) -> Void] = [
    "nbd-handshake": NBDFuzzing.handshake,
    "nbd-request": NBDFuzzing.requests,
    "control": ControlFuzzing.connection,
    "vmdk-descriptor": { _ = try? VMDKDescriptor.parse($0, source: "fuzz input") },
    "state-file": { TrackerFormatFuzzing.stateFile($0); TrackerFormatFuzzing.stateFile(Checksums.trailing($0)) },
    "activity-log": { TrackerFormatFuzzing.activityLog($0); TrackerFormatFuzzing.activityLog(Checksums.activityLog($0)) },
    "repo-config": { RepositoryFormatFuzzing.config($0); RepositoryFormatFuzzing.config(Checksums.jsonEnvelope($0)) },
    "snapshot-record": { RepositoryFormatFuzzing.snapshotRecord($0); RepositoryFormatFuzzing.snapshotRecord(Checksums.jsonEnvelope($0)) },
    "index-file": { RepositoryFormatFuzzing.indexFile($0); RepositoryFormatFuzzing.indexFile(Checksums.trailing($0)) },
    "disk-map": { RepositoryFormatFuzzing.diskMap($0); RepositoryFormatFuzzing.diskMap(Checksums.trailing($0)) },
    "map-page": { RepositoryFormatFuzzing.envelope(Checksums.envelope($0), mapPage: true) },
    "chunk-envelope": { RepositoryFormatFuzzing.envelope(Checksums.envelope($0), mapPage: false) },
    "pack": { RepositoryFormatFuzzing.pack($0) },
    "nightly-config": { _ = try? RunConfig.parse(String(decoding: $0, as: UTF8.self), file: "fuzz.toml") },
]

/// Checksums rewritten to match, so mutations reach the fields behind them (the raw bytes
/// are fuzzed too, which covers the mismatch paths).
package enum Checksums {
    package static func put(_ v: UInt64, _ b: inout [UInt8], at i: Int) {
        withUnsafeBytes(of: v.littleEndian) { b.replaceSubrange(i..<i + 8, with: $0) }
    }
    /// The last 8 bytes: XXH3-64 of everything before (state file, index file, disk map).
    package static func trailing(_ bytes: [UInt8]) -> [UInt8] {
        guard bytes.count >= 8 else { return bytes }
        var b = bytes
        put(XXH3.hash64(Array(b[..<(b.count - 8)])), &b, at: b.count - 8)
        return b
    }
    /// The activity log header: bytes 48..<56 are XXH3-64 of bytes 0..<48.
    package static func activityLog(_ bytes: [UInt8]) -> [UInt8] {
        guard bytes.count >= 56 else { return bytes }
        var b = bytes
        put(XXH3.hash64(Array(b[0..<48])), &b, at: 48)
        return b
    }
    /// magic(4) version(4) length(8) XXH3-64(8) JSON.
    package static func jsonEnvelope(_ bytes: [UInt8]) -> [UInt8] {
        guard bytes.count >= 24 else { return bytes }
        var b = bytes
        put(UInt64(b.count - 24), &b, at: 8)
        put(XXH3.hash64(Array(b[24...])), &b, at: 16)
        return b
    }
    /// A 48-byte envelope header: stored length at 12, payload sum at 32, header sum at 40.
    package static func envelope(_ bytes: [UInt8]) -> [UInt8] {
        guard bytes.count >= 48 else { return bytes }
        var b = bytes
        let stored = Int(b[12]) | Int(b[13]) << 8 | Int(b[14]) << 16 | Int(b[15]) << 24
        if stored <= b.count - 48 { put(XXH3.hash64(Array(b[48..<48 + stored])), &b, at: 32) }
        put(XXH3.hash64(Array(b[0..<40])), &b, at: 40)
        return b
    }
}

/// A 1 MiB export that reads zeroes and accepts everything.
package struct NullExport: NBDExport {
    package init() {}
    package var info = NBDExportInfo(name: "disk", size: 1 << 20, metaContexts: ["base:allocation", "qemu:dirty-bitmap:tessera"])
    package func read(offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws { buffer.initializeMemory(as: UInt8.self, repeating: 0) }
    package func write(offset: UInt64, data: UnsafeRawBufferPointer, fua: Bool) throws {}
    package func trim(offset: UInt64, length: UInt32, fua: Bool) throws {}
    package func writeZeroes(offset: UInt64, length: UInt32, noHole: Bool, fua: Bool) throws {}
    package func flush() throws {}
    package func blockStatus(context: String, offset: UInt64, length: UInt32) throws -> [NBDBlockStatusExtent] {
        [NBDBlockStatusExtent(length: length / 2 + 1, flags: 1), NBDBlockStatusExtent(length: length, flags: 0)]
    }
}

package struct NullProvider: NBDExportProvider {
    package init() {}
    package func exportNames() -> [String] { ["disk"] }
    package func export(named name: String) -> (any NBDExport)? { name == "disk" || name.isEmpty ? NullExport() : nil }
}

package enum NBDFuzzing {
    /// The handshake state machine until it closes or starts transmission, then the requests.
    package static func handshake(_ bytes: [UInt8]) {
        var buffer = ByteBuffer(bytes: bytes)
        var machine = NBDHandshake(provider: NullProvider())
        while let action = machine.process(&buffer) {
            switch action {
            case .send: continue
            case .sendAndClose, .close: return
            case .startTransmission(_, let session):
                transmit(&buffer, session: session)
                return
            }
        }
    }

    /// Requests on a session with structured replies and a selected meta context.
    package static func requests(_ bytes: [UInt8]) {
        var buffer = ByteBuffer(bytes: bytes)
        let export = NullExport()
        let session = NBDSession(export: export, info: export.info, structuredReplies: bytes.first.map { $0 & 1 == 0 } ?? true,
                                 contexts: [(id: 1, name: "base:allocation"), (id: 2, name: "qemu:dirty-bitmap:tessera")])
        transmit(&buffer, session: session)
    }

    package static func transmit(_ buffer: inout ByteBuffer, session: NBDSession) {
        var parser = NBDRequestParser(maximumPayload: 1 << 16)
        let allocator = ByteBufferAllocator()
        while true {
            guard let result = try? parser.next(&buffer) else { return }
            switch result {
            case .needMoreData, .oversizedWrite: return
            case .writeHeader: parser.acceptPayload()
            case .request(let r):
                guard NBDTransmission.validate(r, session: session) == nil else { continue }
                // As the handler does: the cached fast path is for READ only.
                if r.type == 0 { _ = NBDTransmission.readIfCached(r, session: session, allocator: allocator) }
                _ = NBDTransmission.perform(r, session: session, allocator: allocator)
            }
        }
    }
}

