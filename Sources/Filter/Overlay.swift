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
/// - `overlay.data`: block-sized slots, each holding some sub-blocks (4 KiB for the default
///   64 KiB blocks) of one block; the rest of the block still reads from the base. A write
///   fills only the sub-blocks it touches (copying the rest of a partly written sub-block
///   from the base), so a 4 KiB write costs one 4 KiB write here, not a 64 KiB copy, and
///   the data file stays as sparse as the writes.
/// - `overlay.map`: a 64-byte header, then append-only 64-byte records
///   (`data` block→slot with the mask of sub-blocks the slot holds, `zero` block reads as
///   zeroes, `merged` block copied back to the base). The newest record for a block wins.
///
/// Crash rules (see docs/CONTROL.md "Checkpoints"):
/// - A FLUSH (or FUA) makes every record so far durable and advances `flushedRecords` in the
///   header; records below it are trusted as they are.
/// - A record past `flushedRecords` was never flushed, so NBD lets us lose it; it is kept only
///   if its slot still holds the content it was allocated with (checksum), otherwise dropped
///   and the block falls back to the older, flushed version.
/// - Writes into a block whose newest record is unflushed go to a fresh slot (copy on write),
///   never into that record's slot, so a write cut short by a kill cannot invalidate the
///   acknowledged writes before it. A record's checksum covers only the span of sub-blocks
///   it wrote; a write that adds sub-blocks to a flushed record's slot writes only sub-blocks
///   that record's checksum does not need (it is trusted whatever its slot holds).
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
        /// For `data`: bit i set = sub-block i of the block is in the slot; the others read
        /// from the base.
        var mask: UInt64 = 0
    }

    static let headerMagic: UInt64 = 0x5453_4F56_4D41_5031 // "TSOVMAP1"
    static let recordMagic: UInt32 = 0x5453_4F52 // "TSOR"
    /// 2: records carry a sub-block mask. Version 1 overlays (whole blocks, the mask fields
    /// zero) are still read: their records hold whole blocks.
    static let version: UInt32 = 2
    static let recordSize = 64

    let directory: String
    let granularity: UInt64
    let diskSize: UInt64
    /// The copy-on-write unit inside a block: 4 KiB (a page, what guests write) unless a block
    /// has more than 64 of them, so a mask fits one UInt64.
    let subBlock: UInt64
    private var subBlocks: Int { Int(granularity / subBlock) }
    private var fullMask: UInt64 { subBlocks == 64 ? ~0 : (1 << UInt64(subBlocks)) - 1 }
    private let mapFile: BlockFile
    private let dataFile: BlockFile

    private struct State: ~Copyable {
        var map: [UInt64: Entry] = [:]
        var recordCount: UInt64 = 0
        var flushedRecords: UInt64 = 0
        var nextSlot: UInt64 = 0
        /// Bytes written into slots (the data file is sparse: a slot holds only its sub-blocks).
        var slotBytes: UInt64 = 0
        var merging = false
        var releaseCommit = false
    }
    private let state: Mutex<State>
    /// Test hook: runs after a write's bytes land in a slot and before its record is
    /// appended, the instant a kill is most dangerous. nil in production.
    let faultBeforeRecord = Mutex<(@Sendable () throws -> Void)?>(nil)

    var mapPath: String { "\(directory)/overlay.map" }
    static func exists(in directory: String) -> Bool { DurableFile.exists("\(directory)/overlay.map") }

    private init(directory: String, granularity: UInt64, diskSize: UInt64, subBlock: UInt64,
                 mapFile: BlockFile, dataFile: BlockFile, state: consuming State) {
        self.directory = directory
        self.granularity = granularity
        self.diskSize = diskSize
        self.subBlock = subBlock
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
                                  subBlock: subBlockSize(granularity: granularity),
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

    /// 4 KiB, or larger when a block has more than 64 of them; the whole block when 4 KiB
    /// does not divide it.
    static func subBlockSize(granularity: UInt64) -> UInt64 {
        var size = min(4096, granularity)
        while granularity / size > 64 { size *= 2 }
        return granularity % size == 0 ? size : granularity
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
        let storedSubBlock = try r.u64(); _ = try r.u64()
        let checksum = try r.u64()
        guard magic == headerMagic, version == 1 || version == Overlay.version,
              checksum == XXH3.hash64(Array(header[0..<56])) else {
            throw FilterError(.damaged, "overlay header in \(directory)/overlay.map is damaged; the writes taken during the open checkpoint cannot be trusted. Move the overlay files aside and run `tessera filter reset` for this disk, then take a full backup")
        }
        guard UInt64(storedGranularity) == granularity, storedDiskSize == diskSize else {
            throw FilterError(.damaged, "overlay in \(directory) was made for granularity \(storedGranularity) and disk size \(storedDiskSize), not \(granularity)/\(diskSize); was the disk resized while a checkpoint was open?")
        }
        // Version 1 held whole blocks; a sub-block must divide the block into at most 64.
        let subBlock = version == 1 ? granularity : storedSubBlock
        guard subBlock > 0, granularity % subBlock == 0, granularity / subBlock <= 64 else {
            throw FilterError(.damaged, "overlay header in \(directory)/overlay.map names a sub-block of \(storedSubBlock) bytes, which does not fit blocks of \(granularity); move the overlay aside and reset the disk's tracking")
        }
        let overlay = Overlay(directory: directory, granularity: granularity, diskSize: diskSize, subBlock: subBlock,
                              mapFile: mapFile, dataFile: dataFile, state: State())
        try overlay.rebuildMap(flushed: flushed, merging: merging != 0, releaseCommit: releaseCommit != 0)
        return overlay
    }

    /// Replays the records (see the crash rules above).
    private func rebuildMap(flushed: UInt64, merging: Bool, releaseCommit: Bool) throws {
        try state.withLock { (state: inout State) throws in
            state.flushedRecords = flushed
            state.merging = merging
            state.releaseCommit = releaseCommit
            let recordSize = Overlay.recordSize
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
                // Version 1 records have zero masks: whole blocks.
                let storedMask = try rr.u64(), storedWritten = try rr.u64()
                let mask = storedMask == 0 ? fullMask : storedMask
                let written = storedWritten == 0 ? fullMask : storedWritten
                let rchecksum = try rr.u64()
                let valid = rmagic == Overlay.recordMagic && rchecksum == XXH3.hash64(Array(raw[0..<56]))
                    && mask & ~fullMask == 0 && written & ~fullMask == 0
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
                    let span = self.span(of: written)
                    let sum = try block.withUnsafeMutableBytes { raw in
                        let bytes = UnsafeMutableRawBufferPointer(rebasing: raw[span])
                        try dataFile.read(into: bytes, at: slot * granularity + UInt64(span.lowerBound))
                        return XXH3.hash64(UnsafeRawBufferPointer(bytes))
                    }
                    if sum != dataChecksum { index += 1; continue }
                }
                switch kind {
                case .data:
                    state.map[blockIndex] = Entry(kind: .data, slot: slot, record: index, mask: mask)
                    state.slotBytes += UInt64(span(of: written).count)
                case .zero: state.map[blockIndex] = Entry(kind: .zero, slot: 0, record: index)
                case .merged: state.map[blockIndex] = nil
                }
                index += 1
            }
            state.recordCount = records
        }
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
    var storedBytes: UInt64 { state.withLock { $0.slotBytes + ($0.recordCount + 1) * UInt64(Overlay.recordSize) } }

    func entry(forBlock block: UInt64) -> Entry? { state.withLock { $0.map[block] } }

    // MARK: - I/O
    //
    // Called with the disk's I/O lock held shared and, for writes, the request's blocks held
    // (`BlockRangeLock`: one request at a time changes a block). So the state lock is taken
    // only to look a block up, to reserve a slot and to append a record, never across the
    // data I/O: first touches of different blocks copy in parallel.

    /// Writes `bytes` at `offset` (a byte range inside one block).
    /// - Parameter base: reads the base's bytes at a disk offset, for the rest of a partly
    ///   written sub-block.
    /// - Returns: false when the block is not in the overlay and the overlay is merging, so
    ///   the caller writes to the base instead.
    func write(_ bytes: UnsafeRawBufferPointer, at offset: UInt64, base: (UInt64, UnsafeMutableRawBufferPointer) throws -> Void) throws -> Bool {
        let block = offset / granularity
        let within = Int(offset - block * granularity)
        precondition(bytes.count > 0 && within + bytes.count <= Int(granularity), "a write passed to the overlay stays inside one block")
        let request = within..<(within + bytes.count)
        let touched = mask(covering: request)
        enum Plan { case inPlace(slot: UInt64), extend(Entry), fresh(from: Entry?, slot: UInt64), toBase }
        let plan = state.withLock { (s: inout State) -> Plan in
            let entry = s.map[block]
            if let entry, entry.kind == .data, entry.record < s.flushedRecords {
                // A flushed record is trusted after a crash whatever its slot holds: its own
                // sub-blocks are written in place, new ones are added to the same slot.
                return touched & ~entry.mask == 0 ? .inPlace(slot: entry.slot) : .extend(entry)
            }
            if s.merging && entry == nil { return .toBase }
            // The block's newest record is not flushed: recovery trusts it only while the span
            // it wrote still matches its checksum. Writing its slot would break the match the
            // moment the bytes land, so a kill before this write's own record is appended
            // would drop the block and every acknowledged write in it. Copy on write into a
            // fresh slot instead: the old record stays valid until the new one exists.
            // (Slots freed this way are reclaimed at release.)
            s.nextSlot += 1
            return .fresh(from: entry, slot: s.nextSlot - 1)
        }
        let slot: UInt64, current: Entry?, newMask: UInt64, written: UInt64
        switch plan {
        case .toBase:
            return false
        case .inPlace(let at):
            try dataFile.write(bytes, at: at * granularity + UInt64(within))
            return true
        case .extend(let entry):
            (slot, current, newMask, written) = (entry.slot, entry, entry.mask | touched, touched)
        case .fresh(let from, let at) where from?.kind == .data:
            // Everything the old slot held moves along, in one span.
            (slot, current, newMask) = (at, from, from!.mask | touched)
            written = spanMask(newMask)
        case .fresh(let from, let at) where from?.kind == .zero:
            (slot, current, newMask, written) = (at, from, fullMask, fullMask)
        case .fresh(_, let at):
            (slot, current, newMask, written) = (at, nil, touched, touched)
        }
        let span = self.span(of: written)
        let checksum: UInt64
        if span == request {
            // Whole sub-blocks, nothing to move along: the request's bytes as they are.
            try dataFile.write(bytes, at: slot * granularity + UInt64(within))
            checksum = XXH3.hash64(bytes)
        } else {
            var content = [UInt8](repeating: 0, count: span.count)
            try content.withUnsafeMutableBytes { buffer in
                try fill(buffer, span: span, block: block, from: current, holding: newMask, except: request, base: base)
                (buffer.baseAddress! + (within - span.lowerBound)).copyMemory(from: bytes.baseAddress!, byteCount: bytes.count)
            }
            try dataFile.write(content, at: slot * granularity + UInt64(span.lowerBound))
            checksum = XXH3.hash64(content)
        }
        try state.withLock { (s: inout State) throws in
            try faultBeforeRecord.withLock { try $0?() }
            let record = s.recordCount
            try appendRecord(&s, kind: .data, block: block, slot: slot, dataChecksum: checksum, mask: newMask, written: written)
            s.slotBytes += UInt64(span.count)
            s.map[block] = Entry(kind: .data, slot: slot, record: record, mask: newMask)
        }
        return true
    }

    /// Fills the sub-blocks of `span` (bytes within the block) that the request does not
    /// cover whole with what the block reads now: zeroes for a zeroed block, the old slot for
    /// the sub-blocks it holds, the base for other sub-blocks the new slot will hold. The
    /// rest (gaps the new slot does not hold) stays zero and is never read.
    private func fill(_ buffer: UnsafeMutableRawBufferPointer, span: Range<Int>, block: UInt64, from current: Entry?,
                      holding newMask: UInt64, except request: Range<Int>,
                      base: (UInt64, UnsafeMutableRawBufferPointer) throws -> Void) throws {
        if current?.kind == .zero { return }
        let size = Int(subBlock)
        for i in stride(from: span.lowerBound, to: span.upperBound, by: size) {
            if request.lowerBound <= i && i + size <= request.upperBound { continue }
            let bit: UInt64 = 1 << UInt64(i / size)
            let out = UnsafeMutableRawBufferPointer(rebasing: buffer[(i - span.lowerBound)..<(i - span.lowerBound + size)])
            if let current, current.mask & bit != 0 {
                try dataFile.read(into: out, at: current.slot * granularity + UInt64(i))
            } else if newMask & bit != 0 {
                try base(block * granularity + UInt64(i), out)
            }
        }
    }

    /// Records that a whole block reads as zeroes. Returns false when merging and the block
    /// is not in the overlay (the caller zeroes the base instead).
    func zeroBlock(_ block: UInt64) throws -> Bool {
        try state.withLock { (s: inout State) throws -> Bool in
            if s.merging && s.map[block] == nil { return false }
            let record = s.recordCount
            try appendRecord(&s, kind: .zero, block: block, slot: 0, dataChecksum: 0, mask: 0, written: 0)
            s.map[block] = Entry(kind: .zero, slot: 0, record: record)
            return true
        }
    }

    /// Reads a block's bytes `[within, within + buffer.count)` when the overlay holds any of
    /// the block: the sub-blocks in its slot from there, the others through `base` (the base's
    /// bytes at a disk offset). Returns false when it holds none (the caller reads the base).
    func read(block: UInt64, within: Int, into buffer: UnsafeMutableRawBufferPointer,
              base: (UInt64, UnsafeMutableRawBufferPointer) throws -> Void) throws -> Bool {
        guard let entry = entry(forBlock: block) else { return false }
        switch entry.kind {
        case .data:
            try forEachRun(of: entry.mask, in: within..<(within + buffer.count)) { run, inSlot in
                let out = UnsafeMutableRawBufferPointer(rebasing: buffer[(run.lowerBound - within)..<(run.upperBound - within)])
                if inSlot {
                    try dataFile.read(into: out, at: entry.slot * granularity + UInt64(run.lowerBound))
                } else {
                    try base(block * granularity + UInt64(run.lowerBound), out)
                }
            }
        case .zero: buffer.initializeMemory(as: UInt8.self, repeating: 0)
        case .merged: return false
        }
        return true
    }

    /// What `readIfCached` did.
    enum CachedRead { case served, notInOverlay, wouldBlock }

    /// `read(block:within:into:base:)` without blocking: `.wouldBlock` when the map is locked
    /// (a flush holds it across fdatasync) or some of the data is not in the page cache
    /// (`base` says false).
    func readIfCached(block: UInt64, within: Int, into buffer: UnsafeMutableRawBufferPointer,
                      base: (UInt64, UnsafeMutableRawBufferPointer) -> Bool) -> CachedRead {
        guard let lookup = state.withLockIfAvailable({ $0.map[block] }) else { return .wouldBlock }
        guard let entry = lookup else { return .notInOverlay }
        switch entry.kind {
        case .data:
            var served = true
            forEachRun(of: entry.mask, in: within..<(within + buffer.count)) { run, inSlot in
                guard served else { return }
                let out = UnsafeMutableRawBufferPointer(rebasing: buffer[(run.lowerBound - within)..<(run.upperBound - within)])
                served = inSlot ? dataFile.readIfCached(into: out, at: entry.slot * granularity + UInt64(run.lowerBound))
                                : base(block * granularity + UInt64(run.lowerBound), out)
            }
            return served ? .served : .wouldBlock
        case .zero:
            buffer.initializeMemory(as: UInt8.self, repeating: 0)
            return .served
        case .merged:
            return .notInOverlay
        }
    }

    // MARK: - Sub-block masks

    /// The sub-blocks a byte range (within a block, not empty) touches.
    private func mask(covering range: Range<Int>) -> UInt64 {
        let first = range.lowerBound / Int(subBlock), last = (range.upperBound - 1) / Int(subBlock)
        return spanMask((1 << UInt64(first)) | (1 << UInt64(last)))
    }

    /// Every sub-block from the lowest to the highest set in `mask` (not empty).
    private func spanMask(_ mask: UInt64) -> UInt64 {
        let low = mask.trailingZeroBitCount, high = 63 - mask.leadingZeroBitCount
        let upTo: UInt64 = high == 63 ? ~0 : (1 << UInt64(high + 1)) - 1
        return upTo & ~((1 << UInt64(low)) - 1)
    }

    /// The bytes within a block from the lowest to the highest sub-block set in `mask`.
    private func span(of mask: UInt64) -> Range<Int> {
        let size = Int(subBlock)
        return (mask.trailingZeroBitCount * size)..<((64 - mask.leadingZeroBitCount) * size)
    }

    /// Splits `range` (bytes within a block) into runs of sub-blocks that are all in `mask`
    /// or all out of it, in order.
    private func forEachRun(of mask: UInt64, in range: Range<Int>, _ body: (Range<Int>, Bool) throws -> Void) rethrows {
        let size = Int(subBlock)
        var at = range.lowerBound
        while at < range.upperBound {
            let inSlot = mask & (1 << UInt64(at / size)) != 0
            var end = (at / size + 1) * size
            while end < range.upperBound && (mask & (1 << UInt64(end / size)) != 0) == inSlot { end += size }
            let run = at..<min(end, range.upperBound)
            try body(run, inSlot)
            at = run.upperBound
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
                // Only the sub-blocks the slot holds: the rest of the base is already right.
                try forEachRun(of: entry.mask, in: 0..<Int(length)) { run, inSlot in
                    guard inSlot else { return }
                    try buffer.withUnsafeMutableBytes { raw in
                        let bytes = UnsafeMutableRawBufferPointer(rebasing: raw[0..<run.count])
                        try dataFile.read(into: bytes, at: entry.slot * granularity + UInt64(run.lowerBound))
                        try writeBase(start + UInt64(run.lowerBound), UnsafeRawBufferPointer(bytes))
                    }
                }
            case .zero:
                try zeroBase(ByteRange(offset: start, length: length))
            case .merged:
                break
            }
        }
        try syncBase()
        return try state.withLock { (s: inout State) throws -> Int in
            for (block, _) in batch {
                try appendRecord(&s, kind: .merged, block: block, slot: 0, dataChecksum: 0, mask: 0, written: 0)
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

    /// - Parameters:
    ///   - mask: the sub-blocks the slot holds (`data` only).
    ///   - written: the span of sub-blocks this record wrote and `dataChecksum` covers.
    private func appendRecord(_ s: inout State, kind: Kind, block: UInt64, slot: UInt64, dataChecksum: UInt64,
                              mask: UInt64, written: UInt64) throws {
        var w = ByteWriter()
        w.u32(Overlay.recordMagic); w.u32(kind.rawValue); w.u64(block); w.u64(slot)
        w.u64(s.recordCount); w.u64(dataChecksum); w.u64(mask); w.u64(written)
        w.u64(XXH3.hash64(w.bytes))
        try mapFile.write(w.bytes, at: UInt64(Overlay.recordSize) * (s.recordCount + 1))
        s.recordCount += 1
    }

    private func writeHeader(flushedRecords: UInt64, merging: Bool, releaseCommit: Bool) throws {
        var w = ByteWriter()
        w.u64(Overlay.headerMagic); w.u32(Overlay.version); w.u32(UInt32(granularity)); w.u64(diskSize)
        w.u64(flushedRecords); w.u32(merging ? 1 : 0); w.u32(releaseCommit ? 1 : 0); w.u64(subBlock); w.u64(0)
        w.u64(XXH3.hash64(w.bytes))
        try mapFile.write(w.bytes, at: 0)
    }
}
