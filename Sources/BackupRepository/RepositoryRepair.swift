import BlockIO
import Codecs
import Foundation
import Logging
import Workers

/// `repair index` and `repair snapshots`: explicit, conservative repairs. Nothing is
/// zero-filled and no snapshot is deleted unless asked.
public enum RepositoryRepair {
    public struct IndexReport: Sendable, Equatable, Codable {
        public var packs = 0
        /// Packs whose trailer was damaged: their envelopes were walked instead.
        public var packsWalked = 0
        public var chunksIndexed = 0
        /// Chunk copies left out because their envelope fails its checksums.
        public var chunksSkipped = 0
        public var indexFilesDeleted = 0
        public var indexFilesWritten = 0
    }

    /// Rebuilds the index from the packs alone: one new index file listing every chunk
    /// whose envelope verifies, written and made durable before every other index file is
    /// deleted. The caller holds the exclusive lock.
    /// - Parameters:
    ///   - cancellation: stops the rebuild between packs, before anything is written; a
    ///     cancelled rebuild changes nothing.
    ///   - logger: notes for the operator, at `.notice` (packs skipped or walked).
    public static func rebuildIndex(_ repo: Repository, cancellation: Cancellation? = nil,
                                    logger: Logger = Logger(label: "tessera.repair", factory: { _ in SwiftLogNoOpLogHandler() })) throws -> IndexReport {
        var report = IndexReport()
        let store = repo.store
        var entries: [IndexEntry] = []
        // Never opened (a FIFO would block the rebuild forever); named so the operator can
        // move them out.
        for e in try store.irregularEntries() {
            logger.notice("\(e.path) skipped: not a regular file (\(e.what)) but named like \(e.kind.nounWithArticle); move it out of the repository")
        }
        for key in try store.list(.pack) {
            guard let pack = Digest128(hex: key.name) else { continue }
            try cancellation?.check()
            report.packs += 1
            let bytes: [UInt8]
            do { bytes = try store.get(key) } catch {
                logger.notice("pack \(pack.short)… cannot be read (\(error)); skipped")
                continue
            }
            var found: [PackEntry]
            do {
                found = try PackFile.parse(bytes, id: pack, verifyEnvelopes: false)
            } catch {
                report.packsWalked += 1
                logger.notice("pack \(pack.short)…: \(RepositoryChecker.why(RepositoryError(.damaged, "\(error)"))); walking its envelopes")
                found = PackScan.walkEnvelopes(bytes, id: pack)
            }
            for e in found {
                guard envelopeVerifies(bytes, e, pack: pack) else {
                    report.chunksSkipped += 1
                    continue
                }
                entries.append(IndexEntry(chunk: e.id, pack: pack, offset: e.offset, length: e.length, rawLength: e.rawLength))
            }
        }
        // The last moment to stop with nothing changed.
        try cancellation?.check()
        report.chunksIndexed = entries.count
        let old = try store.list(.index).map(\.name)
        let (name, bytes) = IndexFile.encode(entries)
        try store.put(ObjectKey(.index, name), bytes, syncNow: true)
        report.indexFilesWritten = 1
        for o in old where o != name {
            try store.delete(ObjectKey(.index, o))
            report.indexFilesDeleted += 1
        }
        try store.syncPendingDirectories()
        repo.reloadIndexFromScratch()
        try repo.reloadIndex()
        return report
    }

    /// Header checksum, ID and lengths as the trailer says, and the stored-bytes checksum.
    private static func envelopeVerifies(_ bytes: [UInt8], _ e: PackEntry, pack: PackID) -> Bool {
        guard e.offset + UInt64(e.length) <= UInt64(bytes.count),
              let h = try? ObjectEnvelope.parseHeader(.chunk, bytes, at: Int(e.offset), object: "pack \(pack)"),
              h.id == e.id, h.totalLength == e.length, h.rawLength == e.rawLength else { return false }
        let start = Int(e.offset) + ObjectEnvelope.headerSize
        return bytes.withUnsafeBytes { XXH3.hash64(UnsafeRawBufferPointer(rebasing: $0[start..<start + h.storedLength])) } == h.payloadChecksum
    }

    /// A snapshot that cannot be restored whole.
    public struct DamagedSnapshot: Sendable, Equatable, Codable {
        public var snapshot: String
        public var disk: String
        /// The lost byte ranges; empty means the whole snapshot (its record or map is damaged).
        public var lost: [ByteRange] { damage.ranges }
        public var damage: SnapshotDamage
        /// The findings behind it (objects and problems).
        public var causes: [String]
    }

    /// The snapshots a structural check finds unrestorable, with their lost ranges. With
    /// `forget`, their records are deleted (caller holds the exclusive lock); their data
    /// stays until prune.
    /// - Parameter cancellation: stops the check (`Cancelled`) before anything is forgotten.
    public static func damagedSnapshots(_ repo: Repository, forget: Bool, cancellation: Cancellation? = nil) throws -> [DamagedSnapshot] {
        let report = try RepositoryChecker.check(repo, options: CheckOptions(readData: .none, setAside: false),
                                                 cancellation: cancellation)
        var byID: [String: DamagedSnapshot] = [:]
        for f in report.findings where f.lost {
            for d in f.damage {
                if var have = byID[d.snapshot] {
                    have.damage = mergeDamage([[have.damage], [d]])[0]
                    have.causes.append("\(f.object): \(f.problem)")
                    byID[d.snapshot] = have
                } else {
                    byID[d.snapshot] = DamagedSnapshot(snapshot: d.snapshot, disk: d.disk, damage: d, causes: ["\(f.object): \(f.problem)"])
                }
            }
        }
        let out = byID.values.sorted { $0.snapshot < $1.snapshot }
        if forget {
            for s in out where isHexName(s.snapshot) { try repo.store.delete(ObjectKey(.snapshot, s.snapshot)) }
            try repo.store.syncPendingDirectories()
        }
        return out
    }
}
