import BlockIO
import Codecs
import Synchronization
import TrackerControl
#if canImport(Glibc)
import Glibc
#endif

/// The redo log that takes a disk's writes while a checkpoint is open, so the base flat
/// file stays exactly as it was at the checkpoint while the agent reads it.
///
/// Two files in the disk's state directory:
/// - `overlay.data`: block-sized slots holding block contents (copy-on-write: a partial
///   write first copies the rest of its block from the base).
/// - `overlay.map`: a 64-byte header, then append-only 64-byte records
///   (`data` block→slot, `zero` block reads as zeroes, `merged` block copied back to the base).
///   The newest record for a block wins.
///
/// Crash rules (see docs/CONTROL.md "Checkpoints"):
/// - A FLUSH (or FUA) makes every record so far durable and advances `flushedRecords` in the
///   header; records below it are trusted as they are.
/// - A record past `flushedRecords` was never flushed, so NBD lets us lose it; it is kept only
///   if its slot still holds the content it was allocated with (checksum), otherwise dropped
///   and the block falls back to the older, flushed version.
/// - Writes into a block whose newest record is unflushed go to a fresh slot (copy on write),
///   never into that record's slot, so a write cut short by a kill cannot invalidate the
///   acknowledged writes before it.
/// - A merge copies a batch of blocks to the base, syncs the base, then durably appends a
///   `merged` record for each; a crash before that replays the batch, which is safe because
///   no write reached the base copy of those blocks in between.
final class Overlay: Sendable {
    enum Kind: UInt32 { case data = 1, zero = 2, merged = 3 }

    struct Entry: Sendable, Equatable {
        var kind: Kind
        var slot: UInt64
        /// The index of the record that made this entry; below `flushedRecords` it is trusted
        /// after a crash whatever its slot holds.
        var record: UInt64
    }

    static let headerMagic: UInt64 = 0x5453_4F56_4D41_5031 // "TSOVMAP1"
    static let recordMagic: UInt32 = 0x5453_4F52 // "TSOR"
    static let version: UInt32 = 1
    static let recordSize = 64

    let directory: String
    let granularity: UInt64
    let diskSize: UInt64
    private let mapFile: BlockFile
    private let dataFile: BlockFile

    private struct State: ~Copyable {
        var map: [UInt64: Entry] = [:]
        var recordCount: UInt64 = 0
        var flushedRecords: UInt64 = 0
        var nextSlot: UInt64 = 0
        var merging = false
        var releaseCommit = false
    }
    private let state: Mutex<State>
    /// Test hook: runs after a write's bytes land in a slot and before its record is
    /// appended, the instant a kill is most dangerous. nil in production.
    let faultBeforeRecord = Mutex<(@Sendable () throws -> Void)?>(nil)

    var mapPath: String { "\(directory)/overlay.map" }
    static func exists(in directory: String) -> Bool { DurableFile.exists("\(directory)/overlay.map") }

    private init(directory: String, granularity: UInt64, diskSize: UInt64, mapFile: BlockFile, dataFile: BlockFile, state: consuming State) {
        self.directory = directory
        self.granularity = granularity
        self.diskSize = diskSize
        self.mapFile = mapFile
        self.dataFile = dataFile
        self.state = Mutex(state)
    }

    // MARK: - Create, recover, destroy

    /// Creates an empty overlay (durably: header synced, names synced).
    /// Either it exists whole or no file of it is left (a half-made overlay would be taken
    /// for a damaged one at the next start).
    static func create(in directory: String, granularity: UInt64, diskSize: UInt64) throws -> Overlay {
        do {
            let dataFile = try BlockFile(path: "\(directory)/overlay.data", mode: .createReadWrite)
            try dataFile.truncate(to: 0)
            let mapFile = try BlockFile(path: "\(directory)/overlay.map", mode: .createReadWrite)
            try mapFile.truncate(to: 0)
            let overlay = Overlay(directory: directory, granularity: granularity, diskSize: diskSize,
                                  mapFile: mapFile, dataFile: dataFile, state: State())
            try overlay.writeHeader(flushedRecords: 0, merging: false, releaseCommit: false)
            try mapFile.sync()
            try dataFile.sync()
            try DurableFile.syncDirectory(directory)
            return overlay
        } catch {
            unlink("\(directory)/overlay.map")
            unlink("\(directory)/overlay.data")
            throw error
        }
    }

    /// Opens an overlay left by an earlier run and rebuilds its map from the records.
    /// - Throws: `FilterError.damaged` when flushed records are damaged: those writes were
    ///   acknowledged as durable, so refusing is better than silently reverting them.
    static func recover(in directory: String, granularity: UInt64, diskSize: UInt64) throws -> Overlay {
        let mapFile = try BlockFile(path: "\(directory)/overlay.map", mode: .readWrite)
        let dataFile = try BlockFile(path: "\(directory)/overlay.data", mode: .createReadWrite)
        let header = try mapFile.read(count: recordSize, at: 0)
        var r = ByteReader(header)
        let magic = try r.u64(), version = try r.u32(), storedGranularity = try r.u32(), storedDiskSize = try r.u64()
        let flushed = try r.u64(), merging = try r.u32(), releaseCommit = try r.u32()
        _ = try r.u64(); _ = try r.u64()
        let checksum = try r.u64()
        guard magic == headerMagic, version == Overlay.version,
              checksum == XXH3.hash64(Array(header[0..<56])) else {
            throw FilterError(.damaged, "overlay header in \(directory)/overlay.map is damaged; the writes taken during the open checkpoint cannot be trusted. Move the overlay files aside and run `tessera filter reset` for this disk, then take a full backup")
        }
        guard UInt64(storedGranularity) == granularity, storedDiskSize == diskSize else {
            throw FilterError(.damaged, "overlay in \(directory) was made for granularity \(storedGranularity) and disk size \(storedDiskSize), not \(granularity)/\(diskSize); was the disk resized while a checkpoint was open?")
        }
        var state = State()
        state.flushedRecords = flushed
        state.merging = merging != 0
        state.releaseCommit = releaseCommit != 0
        let fileSize = try mapFile.size()
        let records = (fileSize - UInt64(recordSize)) / UInt64(recordSize)
        var index: UInt64 = 0
        var block = [UInt8](repeating: 0, count: Int(granularity))
        while index < records {
            let raw = try mapFile.read(count: recordSize, at: UInt64(recordSize) * (index + 1))
            var rr = ByteReader(raw)
            let rmagic = try rr.u32(), kindRaw = try rr.u32(), blockIndex = try rr.u64(), slot = try rr.u64()
            _ = try rr.u64() // sequence (= index), kept for humans reading a hex dump
            let dataChecksum = try rr.u64()
            _ = try rr.u64(); _ = try rr.u64()
            let rchecksum = try rr.u64()
            let valid = rmagic == recordMagic && rchecksum == XXH3.hash64(Array(raw[0..<56]))
            if !valid || Kind(rawValue: kindRaw) == nil {
                if index < flushed {
                    throw FilterError(.damaged, "overlay record \(index) in \(directory)/overlay.map is damaged although it was flushed; move the overlay aside and reset the disk's tracking")
                }
                index += 1
                continue // an unflushed, torn record: NBD allows losing it
            }
            let kind = Kind(rawValue: kindRaw)!
            // Never hand out a slot any record names, even a rejected one: if it were reused,
            // a later recovery could find the stale record matching the slot's new content.
            if kind == .data { state.nextSlot = max(state.nextSlot, slot + 1) }
            if kind == .data && index >= flushed {
                try block.withUnsafeMutableBytes { try dataFile.read(into: $0, at: slot * granularity) }
                if XXH3.hash64(block) != dataChecksum { index += 1; continue }
            }
            switch kind {
            case .data: state.map[blockIndex] = Entry(kind: .data, slot: slot, record: index)
            case .zero: state.map[blockIndex] = Entry(kind: .zero, slot: 0, record: index)
            case .merged: state.map[blockIndex] = nil
            }
            index += 1
        }
        state.recordCount = records
        let overlay = Overlay(directory: directory, granularity: granularity, diskSize: diskSize,
                              mapFile: mapFile, dataFile: dataFile, state: state)
        return overlay
    }

    /// Removes the overlay files (after a completed merge).
    func destroy() throws {
        unlink("\(directory)/overlay.map")
        unlink("\(directory)/overlay.data")
        try DurableFile.syncDirectory(directory)
    }

    // MARK: - Status

    var isMerging: Bool { state.withLock { $0.merging } }
    var releaseCommit: Bool { state.withLock { $0.releaseCommit } }
    var blockCount: Int { state.withLock { $0.map.count } }
    /// Bytes the overlay holds on disk (data slots + map records).
    var storedBytes: UInt64 { state.withLock { $0.nextSlot * granularity + ($0.recordCount + 1) * UInt64(Overlay.recordSize) } }

    func entry(forBlock block: UInt64) -> Entry? { state.withLock { $0.map[block] } }

    // MARK: - I/O (called with the disk's I/O lock held shared)

    /// Writes `bytes` at `offset` (a byte range inside one block).
    /// - Parameter base: reads the base content of a block for copy-on-write.
    /// - Returns: false when the block is not in the overlay and the overlay is merging, so
    ///   the caller writes to the base instead.
    func write(_ bytes: UnsafeRawBufferPointer, at offset: UInt64, base: (UInt64, UnsafeMutableRawBufferPointer) throws -> Void) throws -> Bool {
        let block = offset / granularity
        let within = Int(offset - block * granularity)
        precondition(within + bytes.count <= Int(granularity), "a write passed to the overlay stays inside one block")
        // A slot whose record was flushed is trusted after a crash whatever it holds, so it
        // can be written in place without the lock.
        let (found, flushed) = state.withLock { ($0.map[block], $0.flushedRecords) }
        if let entry = found, entry.kind == .data, entry.record < flushed {
            try dataFile.write(bytes, at: entry.slot * granularity + UInt64(within))
            return true
        }
        return try state.withLock { (s: inout State) throws -> Bool in
            // Re-check under the lock: another writer may have allocated the block meanwhile.
            if let entry = s.map[block], entry.kind == .data, entry.record < s.flushedRecords {
                try dataFile.write(bytes, at: entry.slot * granularity + UInt64(within))
                return true
            }
            if s.merging && s.map[block] == nil { return false }
            var content = [UInt8](repeating: 0, count: Int(granularity))
            if let entry = s.map[block], entry.kind == .data {
                // The block's newest record is not flushed: recovery trusts it only while its
                // slot still matches the record's checksum. Writing that slot in place would
                // break the match the moment the bytes land, so a kill before this write's
                // own record is appended would drop the block and every acknowledged write
                // in it. Copy on write into a fresh slot instead: the old record stays valid
                // until the new one exists. (Slots freed this way are reclaimed at release.)
                try content.withUnsafeMutableBytes { try dataFile.read(into: $0, at: entry.slot * granularity) }
            } else if s.map[block] == nil {
                try content.withUnsafeMutableBytes { try base(block * granularity, $0) }
            }
            content.withUnsafeMutableBytes { dst in
                (dst.baseAddress! + within).copyMemory(from: bytes.baseAddress!, byteCount: bytes.count)
            }
            let slot = s.nextSlot
            let record = s.recordCount
            try dataFile.write(content, at: slot * granularity)
            try faultBeforeRecord.withLock { try $0?() }
            try appendRecord(&s, kind: .data, block: block, slot: slot, dataChecksum: XXH3.hash64(content))
            s.nextSlot += 1
            s.map[block] = Entry(kind: .data, slot: slot, record: record)
            return true
        }
    }

    /// Records that a whole block reads as zeroes. Returns false when merging and the block
    /// is not in the overlay (the caller zeroes the base instead).
    func zeroBlock(_ block: UInt64) throws -> Bool {
        try state.withLock { (s: inout State) throws -> Bool in
            if s.merging && s.map[block] == nil { return false }
            let record = s.recordCount
            try appendRecord(&s, kind: .zero, block: block, slot: 0, dataChecksum: 0)
            s.map[block] = Entry(kind: .zero, slot: 0, record: record)
            return true
        }
    }

    /// Reads a block's bytes `[within, within + buffer.count)` when the overlay holds the block.
    /// Returns false when it does not (the caller reads the base).
    func read(block: UInt64, within: Int, into buffer: UnsafeMutableRawBufferPointer) throws -> Bool {
        guard let entry = entry(forBlock: block) else { return false }
        switch entry.kind {
        case .data: try dataFile.read(into: buffer, at: entry.slot * granularity + UInt64(within))
        case .zero: buffer.initializeMemory(as: UInt8.self, repeating: 0)
        case .merged: return false
        }
        return true
    }

    /// What `readIfCached` did.
    enum CachedRead { case served, notInOverlay, wouldBlock }

    /// `read(block:within:into:)` without blocking: `.wouldBlock` when the map is locked (a
    /// flush holds it across fdatasync) or the slot's data is not in the page cache.
    func readIfCached(block: UInt64, within: Int, into buffer: UnsafeMutableRawBufferPointer) -> CachedRead {
        guard let lookup = state.withLockIfAvailable({ $0.map[block] }) else { return .wouldBlock }
        guard let entry = lookup else { return .notInOverlay }
        switch entry.kind {
        case .data:
            return dataFile.readIfCached(into: buffer,
                                      at: entry.slot * granularity + UInt64(within)) ? .served : .wouldBlock
        case .zero:
            buffer.initializeMemory(as: UInt8.self, repeating: 0)
            return .served
        case .merged:
            return .notInOverlay
        }
    }

    /// Makes every write so far durable and trusted after a crash.
    func flush() throws {
        // Only records whose data was written before the data sync may be trusted: a record
        // appended meanwhile may point at a slot whose bytes are not durable yet.
        let upTo = state.withLock { $0.recordCount }
        try dataFile.syncData()
        try state.withLock { (s: inout State) throws in
            try mapFile.syncData()
            s.flushedRecords = max(s.flushedRecords, upTo)
            try writeHeader(flushedRecords: s.flushedRecords, merging: s.merging, releaseCommit: s.releaseCommit)
            try mapFile.syncData()
        }
    }

    // MARK: - Merge

    /// Durably records that a release started, and whether it commits or aborts, so a merge
    /// cut short by a crash resumes on restart and finishes the same release.
    func beginMerge(commit: Bool) throws {
        let upTo = state.withLock { $0.recordCount }
        try dataFile.syncData()
        try state.withLock { (s: inout State) throws in
            try mapFile.syncData()
            let flushed = max(s.flushedRecords, upTo)
            try writeHeader(flushedRecords: flushed, merging: true, releaseCommit: commit)
            try mapFile.syncData()
            s.flushedRecords = flushed
            // Merging only once that is durable: a merging overlay lets writes through to the
            // base, which must stay the checkpoint while a failed release reports "nothing merged".
            // (A header that reached the disk without its sync only makes a crash recovery merge,
            // which is what the live disk needs anyway.)
            s.merging = true
            s.releaseCommit = commit
        }
    }

    /// Copies up to `limit` blocks back to the base. Call with the disk's I/O lock held
    /// exclusive. Returns the number of blocks still in the overlay.
    func mergeBatch(limit: Int, writeBase: (UInt64, UnsafeRawBufferPointer) throws -> Void,
                    zeroBase: (ByteRange) throws -> Void, syncBase: () throws -> Void) throws -> Int {
        let batch: [(UInt64, Entry)] = state.withLock { s in Array(s.map.prefix(limit)).map { ($0.key, $0.value) } }
        if batch.isEmpty { return 0 }
        var buffer = [UInt8](repeating: 0, count: Int(granularity))
        for (block, entry) in batch {
            let start = block * granularity
            let length = min(granularity, diskSize - start)
            switch entry.kind {
            case .data:
                try buffer.withUnsafeMutableBytes { try dataFile.read(into: $0, at: entry.slot * granularity) }
                try buffer.withUnsafeBytes { try writeBase(start, UnsafeRawBufferPointer(rebasing: $0[0..<Int(length)])) }
            case .zero:
                try zeroBase(ByteRange(offset: start, length: length))
            case .merged:
                break
            }
        }
        try syncBase()
        return try state.withLock { (s: inout State) throws -> Int in
            for (block, _) in batch {
                try appendRecord(&s, kind: .merged, block: block, slot: 0, dataChecksum: 0)
                s.map[block] = nil
            }
            // The `merged` records are durable now. `flushedRecords` stays: data records that
            // clients appended meanwhile point at slots not synced, so they keep their checksum
            // check after a crash (`merged` records are trusted whenever they are intact).
            try mapFile.syncData()
            try writeHeader(flushedRecords: s.flushedRecords, merging: true, releaseCommit: s.releaseCommit)
            return s.map.count
        }
    }

    // MARK: - Records

    private func appendRecord(_ s: inout State, kind: Kind, block: UInt64, slot: UInt64, dataChecksum: UInt64) throws {
        var w = ByteWriter()
        w.u32(Overlay.recordMagic); w.u32(kind.rawValue); w.u64(block); w.u64(slot)
        w.u64(s.recordCount); w.u64(dataChecksum); w.u64(0); w.u64(0)
        w.u64(XXH3.hash64(w.bytes))
        try mapFile.write(w.bytes, at: UInt64(Overlay.recordSize) * (s.recordCount + 1))
        s.recordCount += 1
    }

    private func writeHeader(flushedRecords: UInt64, merging: Bool, releaseCommit: Bool) throws {
        var w = ByteWriter()
        w.u64(Overlay.headerMagic); w.u32(Overlay.version); w.u32(UInt32(granularity)); w.u64(diskSize)
        w.u64(flushedRecords); w.u32(merging ? 1 : 0); w.u32(releaseCommit ? 1 : 0); w.u64(0); w.u64(0)
        w.u64(XXH3.hash64(w.bytes))
        try mapFile.write(w.bytes, at: 0)
    }
}
