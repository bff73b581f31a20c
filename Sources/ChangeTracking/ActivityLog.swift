import BlockIO
import Codecs
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// The write-ahead activity log, `activity.log` (DRBD's idea): a ring of fixed-size record
/// slots, each record naming coarse extents that may hold marks newer than the state file.
/// An extent is durably in the log before the first write into it is let through, so after a
/// hard kill "state file ∪ logged extents" covers every mark. Layout in docs/TRACKING.md.
///
/// Not thread-safe: `ChangeTracker` serialises appends under its log lock.
struct ActivityLog: ~Copyable {
    static let magic: [UInt8] = Array("TESSALOG".utf8)
    static let recordMagic: UInt32 = 0x5452_4543 // "CERT" little-endian bytes: 43 45 52 54
    static let version: UInt32 = 1
    static let slotSize = 4096
    static let headerSize = 4096
    static let recordHeaderSize = 40
    static let extentsPerRecord = (slotSize - recordHeaderSize) / 8

    let file: BlockFile
    let slotCount: Int
    let extentSize: UInt64

    /// Makes `path` an empty log of this shape and opens it.
    ///
    /// A log of the same size is emptied in place (slots zeroed first, then the header), so a
    /// restart needs no free space: a state file system with less room than one log must not
    /// keep the filter from starting after a clean shutdown. Until the new header lands the
    /// old one stays valid, and every record left in a slot is at or below the state file's
    /// log sequence (the caller saves the state first), so a crash in between replays nothing
    /// wrong. A log of another shape is replaced atomically, after checking the space.
    init(prepare path: String, slotCount: Int, extentSize: UInt64, generation: UUID) throws {
        let header = Self.header(slotCount: slotCount, extentSize: extentSize, generation: generation)
        let total = UInt64(Self.headerSize + slotCount * Self.slotSize)
        if let existing = try? BlockFile(path: path, mode: .readWrite), (try? existing.size()) == total {
            let zeroes = [UInt8](repeating: 0, count: 256 * Self.slotSize)
            var at = UInt64(Self.headerSize)
            while at < total {
                let n = Int(min(UInt64(zeroes.count), total - at))
                try zeroes.withUnsafeBytes { try existing.write(UnsafeRawBufferPointer(rebasing: $0[0..<n]), at: at) }
                at += UInt64(n)
            }
            try existing.syncData()
            try existing.write(header, at: 0)
            try existing.syncData()
            file = existing
        } else {
            try DurableFile.requireFreeSpace(total, in: DurableFile.parentDirectory(of: path), for: "a new activity log")
            // Written out in full (no holes) so appends never allocate and fdatasync stays cheap.
            try DurableFile.write(header + [UInt8](repeating: 0, count: Int(total) - header.count), to: path)
            file = try BlockFile(path: path, mode: .readWrite)
        }
        self.slotCount = slotCount
        self.extentSize = extentSize
    }

    /// The header block (`headerSize` bytes).
    static func header(slotCount: Int, extentSize: UInt64, generation: UUID) -> [UInt8] {
        var w = ByteWriter(capacity: Self.headerSize)
        w.raw(Self.magic)
        w.u32(Self.version)
        w.u32(UInt32(Self.slotSize))
        w.u64(UInt64(slotCount))
        w.u64(extentSize)
        w.uuid(generation)
        let checksum = w.bytes.withUnsafeBytes { XXH3.hash64($0) }
        w.u64(checksum)
        w.raw([UInt8](repeating: 0, count: Self.headerSize - w.bytes.count))
        return w.bytes
    }

    /// Writes one record into its slot (`sequence % slotCount`). Not durable until `sync()`.
    func append(sequence: UInt64, generation: UUID, extents: ArraySlice<UInt64>) throws {
        precondition(extents.count <= Self.extentsPerRecord, "caller splits records")
        var slot = Self.encodeRecord(sequence: sequence, generation: generation, extents: extents)
        slot.append(contentsOf: [UInt8](repeating: 0, count: Self.slotSize - slot.count))
        let offset = UInt64(Self.headerSize) + UInt64(sequence % UInt64(slotCount)) * UInt64(Self.slotSize)
        try file.write(slot, at: offset)
    }

    func sync() throws { try file.syncData() }

    static func encodeRecord(sequence: UInt64, generation: UUID, extents: ArraySlice<UInt64>) -> [UInt8] {
        var w = ByteWriter(capacity: recordHeaderSize + extents.count * 8)
        w.u32(recordMagic)
        w.u32(UInt32(extents.count))
        w.u64(sequence)
        w.u64(0) // checksum, filled below
        w.uuid(generation)
        for e in extents { w.u64(e) }
        var hashed = Array(w.bytes[0..<16])
        hashed.append(contentsOf: w.bytes[24...])
        let checksum = XXH3.hash64(hashed)
        withUnsafeBytes(of: checksum.littleEndian) { w.bytes.replaceSubrange(16..<24, with: $0) }
        return w.bytes
    }

    /// One valid record.
    struct Record {
        var sequence: UInt64
        var generation: UUID
        var extents: [UInt64]
    }

    /// What the log file holds, read for replay after an unclean shutdown.
    struct Contents {
        var slotCount: Int
        var extentSize: UInt64
        /// Valid records by slot.
        var records: [Int: Record]
        /// Slots that are neither empty (all zero) nor a valid record.
        var damagedSlots: [Int]
    }

    /// Reads and checks the header, then classifies every slot.
    static func read(_ path: String) throws(FormatProblem) -> Contents {
        let bytes: [UInt8]
        do { bytes = try DurableFile.read(path) } catch { throw FormatProblem("the activity log cannot be read: \(error)") }
        return try decode(bytes)
    }

    /// Checks the header of a whole log file's bytes, then classifies every slot.
    static func decode(_ bytes: [UInt8]) throws(FormatProblem) -> Contents {
        guard bytes.count >= 56 else { throw FormatProblem("the activity log header is truncated") }
        guard Array(bytes[0..<8]) == magic else { throw FormatProblem("the activity log has a bad magic number") }
        var r = ByteReader(bytes, offset: 8)
        do {
            let version = try r.u32(), slotSize = try r.u32(), slots = try r.u64(), extentSize = try r.u64()
            _ = try r.uuid()
            let stored = try r.u64()
            guard stored == XXH3.hash64(Array(bytes[0..<48])) else { throw FormatProblem("the activity log header checksum does not match") }
            guard version == Self.version else { throw FormatProblem("the activity log has version \(version); this build reads \(Self.version)") }
            guard slotSize == UInt32(Self.slotSize), slots >= 1, slots <= 1 << 20,
                  extentSize >= TrackerConfiguration.minimumGranularity, extentSize & (extentSize - 1) == 0 else {
                throw FormatProblem("the activity log header has out-of-range fields (slot size \(slotSize), \(slots) slots, extent \(extentSize))")
            }
            guard bytes.count == headerSize + Int(slots) * Self.slotSize else {
                throw FormatProblem("the activity log is \(bytes.count) bytes; its header says \(headerSize + Int(slots) * Self.slotSize)")
            }
            var records: [Int: Record] = [:]
            var damaged: [Int] = []
            for slot in 0..<Int(slots) {
                let start = headerSize + slot * Self.slotSize
                let raw = bytes[start..<start + Self.slotSize]
                if raw.allSatisfy({ $0 == 0 }) { continue }
                if let record = decodeRecord(Array(raw)), record.sequence % slots == UInt64(slot) {
                    records[slot] = record
                } else {
                    damaged.append(slot)
                }
            }
            return Contents(slotCount: Int(slots), extentSize: extentSize, records: records, damagedSlots: damaged)
        } catch let problem as FormatProblem {
            throw problem
        } catch {
            throw FormatProblem("the activity log header is truncated")
        }
    }

    static func decodeRecord(_ slot: [UInt8]) -> Record? {
        var r = ByteReader(slot)
        guard let magic = try? r.u32(), magic == recordMagic,
              let count = try? r.u32(), count <= UInt32(extentsPerRecord),
              let sequence = try? r.u64(), let stored = try? r.u64(),
              let generation = try? r.uuid(),
              let extents = try? r.words(Int(count)) else { return nil }
        var hashed = Array(slot[0..<16])
        hashed.append(contentsOf: slot[24..<(recordHeaderSize + Int(count) * 8)])
        guard XXH3.hash64(hashed) == stored else { return nil }
        return Record(sequence: sequence, generation: generation, extents: extents)
    }

    /// The outcome of replaying a log after an unclean shutdown.
    enum Replay {
        /// Extents to mark changed, the last replayed sequence, and notes for the open report.
        case replayed(extents: [UInt64], lastSequence: UInt64, notes: [String])
        /// The log cannot be trusted: a needed record is missing while a later one survives.
        case broken(String)
    }

    /// Records after `after` of `generation`, in order, ending at the first missing or
    /// damaged one. A damaged slot exactly where the next record would go is a torn tail (the
    /// write it guarded was never let through); a surviving record beyond a gap is damage
    /// in the middle, which cannot be told apart from lost marks: broken.
    static func replay(_ contents: Contents, generation: UUID, after logSequence: UInt64) -> Replay {
        let needed = contents.records.values.filter { $0.sequence > logSequence }.sorted { $0.sequence < $1.sequence }
        var extents: [UInt64] = []
        var expected = logSequence + 1
        var notes: [String] = []
        for record in needed {
            guard record.sequence == expected else {
                return .broken("activity log record \(expected) is missing or damaged but record \(record.sequence) after it survived")
            }
            guard record.generation == generation else {
                return .broken("activity log record \(record.sequence) belongs to generation \(record.generation.uuidString), not \(generation.uuidString)")
            }
            extents.append(contentsOf: record.extents)
            expected += 1
        }
        let tailSlot = Int(expected % UInt64(contents.slotCount))
        for slot in contents.damagedSlots {
            if slot == tailSlot {
                notes.append("activity log slot \(slot) holds a torn or damaged record after record \(expected - 1); replay ended there (its write was never let through)")
            } else {
                notes.append("activity log slot \(slot) is damaged; it holds no record newer than the state file, so nothing is lost")
            }
        }
        return .replayed(extents: extents, lastSequence: expected - 1, notes: notes)
    }
}
