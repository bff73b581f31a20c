import Codecs
import Foundation

/// Entry points for the fuzz targets (Tools/fuzz-targets, built only with TESSERA_FUZZ=1) and
/// the regression replay test: each runs one repository object's decoder on untrusted bytes,
/// exactly as a read of that object does. Errors are the expected outcome; a trap is a bug.
/// `package`, not public: no API for users.
package enum RepositoryFormatFuzzing {
    package static func config(_ bytes: [UInt8]) {
        _ = try? JSONEnvelope.decode(RepositoryConfig.self, bytes, magic: "TCFG")
    }

    package static func snapshotRecord(_ bytes: [UInt8]) {
        _ = try? JSONEnvelope.decode(SnapshotRecord.self, bytes, magic: "TSNP")
    }

    /// The file's name is its XXH3-128, as a repository names it.
    package static func indexFile(_ bytes: [UInt8]) {
        _ = try? IndexFile.decode(bytes, name: XXH3.hash128(bytes).hex)
    }

    package static func diskMap(_ bytes: [UInt8]) {
        _ = try? DiskMapCodec.decodeMap(bytes, id: XXH3.hash128(bytes))
    }

    /// A map page or a chunk envelope: header, payload checksum, zstd, content hash. The
    /// expected ID is the one the header claims, so the decoder gets as far as decompression.
    package static func envelope(_ bytes: [UInt8], mapPage: Bool) {
        let kind: ObjectEnvelope.Kind = mapPage ? .mapPage : .chunk
        guard let header = try? ObjectEnvelope.parseHeader(kind, bytes, object: "fuzz input") else { return }
        let capacity = min(max(header.rawLength, 0), 1 << 24)
        let destination = UnsafeMutableRawBufferPointer.allocate(byteCount: max(capacity, 1), alignment: 16)
        defer { destination.deallocate() }
        let d = ZstdDecompressor()
        _ = try? ObjectEnvelope.decode(kind, bytes, expectedID: header.id, object: "fuzz input",
                                       into: UnsafeMutableRawBufferPointer(rebasing: destination[0..<capacity]), decompressor: d)
    }

    /// A whole pack (with envelope checks) and its trailer on its own, as a scan reads it.
    package static func pack(_ bytes: [UInt8]) {
        _ = try? PackFile.parse(bytes, id: XXH3.hash128(bytes), verifyEnvelopes: true)
        _ = try? PackScan.parseTrailer(bytes, trailerOffset: 0, object: "fuzz input")
    }
}
