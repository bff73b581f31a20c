import Codecs

/// The in-memory chunk index: chunk ID → (pack, offset, length), O(1) lookups.
///
/// Swift's `Dictionary<Digest128, Location>` costs ~90 bytes per chunk (measured in
/// `RepositoryBench`), over the 48-byte budget at 10^6 chunks. This table keeps entries
/// dense in one buffer (28 bytes each: the ID as four UInt32, a pack number, offset,
/// length) and a separate open-addressing slot array of UInt32 entry numbers (linear
/// probing, load ≤ 0.5), so at 10^6 chunks it costs ~28 + 8.4 bytes per chunk.
/// Not thread-safe: the repository guards it with a mutex.
public struct ChunkIndex: ~Copyable {
    /// Packed so the stride is 28 bytes (4-byte alignment), not 32.
    struct Entry {
        var id0: UInt32, id1: UInt32, id2: UInt32, id3: UInt32
        var pack: UInt32
        var offset: UInt32
        var length: UInt32

        init(_ id: ChunkID, pack: UInt32, offset: UInt32, length: UInt32) {
            id0 = UInt32(truncatingIfNeeded: id.high >> 32)
            id1 = UInt32(truncatingIfNeeded: id.high)
            id2 = UInt32(truncatingIfNeeded: id.low >> 32)
            id3 = UInt32(truncatingIfNeeded: id.low)
            self.pack = pack
            self.offset = offset
            self.length = length
        }

        func matches(_ id: ChunkID) -> Bool {
            id0 == UInt32(truncatingIfNeeded: id.high >> 32) && id1 == UInt32(truncatingIfNeeded: id.high)
                && id2 == UInt32(truncatingIfNeeded: id.low >> 32) && id3 == UInt32(truncatingIfNeeded: id.low)
        }
    }

    private var entries: UnsafeMutablePointer<Entry>
    private var entryCapacity: Int
    /// Number of chunks held.
    public private(set) var count = 0
    /// 0 = empty, otherwise entry number + 1.
    private var slots: UnsafeMutablePointer<UInt32>
    private var slotMask: Int
    /// Pack number → pack ID; pack numbers are positions here.
    private(set) var packs: [PackID] = []
    private var packNumbers: [PackID: UInt32] = [:]

    /// - Parameter reserve: entries to make room for up front (no growth until then).
    public init(reserve: Int = 1024) {
        entryCapacity = max(reserve, 16)
        entries = .allocate(capacity: entryCapacity)
        let slotCount = Self.slotCount(for: entryCapacity)
        slots = .allocate(capacity: slotCount)
        slots.initialize(repeating: 0, count: slotCount)
        slotMask = slotCount - 1
    }

    deinit {
        entries.deallocate()
        slots.deallocate()
    }

    private static func slotCount(for n: Int) -> Int {
        var s = 16
        while s < 2 * n { s <<= 1 }
        return s
    }

    /// Bytes held by the table (entries, slots, pack table), for the memory budget.
    public var memoryBytes: Int {
        entryCapacity * MemoryLayout<Entry>.stride + (slotMask + 1) * 4 + packs.count * (16 + 40)
    }

    /// Grows the entry buffer to hold `total` entries without reallocating (load time:
    /// the index files say how many entries there are).
    public mutating func reserve(_ total: Int) {
        if total > entryCapacity { growEntries(to: total) }
        if 2 * total > slotMask + 1 { rehash(slotCount: Self.slotCount(for: total)) }
    }

    private mutating func growEntries(to capacity: Int) {
        let new = UnsafeMutablePointer<Entry>.allocate(capacity: capacity)
        new.moveInitialize(from: entries, count: count)
        entries.deallocate()
        entries = new
        entryCapacity = capacity
    }

    private mutating func rehash(slotCount: Int) {
        slots.deallocate()
        slots = .allocate(capacity: slotCount)
        slots.initialize(repeating: 0, count: slotCount)
        slotMask = slotCount - 1
        for i in 0..<count {
            let e = entries[i]
            var s = Int(truncatingIfNeeded: UInt64(e.id2) << 32 | UInt64(e.id3)) & slotMask
            while slots[s] != 0 { s = (s + 1) & slotMask }
            slots[s] = UInt32(i + 1)
        }
    }

    private func find(_ id: ChunkID) -> Int? {
        var s = Int(truncatingIfNeeded: id.low) & slotMask
        while true {
            let v = slots[s]
            if v == 0 { return nil }
            if entries[Int(v - 1)].matches(id) { return Int(v - 1) }
            s = (s + 1) & slotMask
        }
    }

    public func contains(_ id: ChunkID) -> Bool { find(id) != nil }

    public func location(of id: ChunkID) -> ChunkLocation? {
        guard let i = find(id) else { return nil }
        let e = entries[i]
        return ChunkLocation(pack: packs[Int(e.pack)], offset: UInt64(e.offset), length: Int(e.length))
    }

    /// Adds a chunk's location; the first location of a chunk wins (duplicates stored by
    /// concurrent writers are equally good).
    public mutating func insert(_ id: ChunkID, pack: PackID, offset: UInt64, length: Int) {
        guard find(id) == nil else { return }
        // Packs are far below 4 GiB, so offsets and lengths fit in 32 bits.
        guard offset <= UInt64(UInt32.max), length <= Int(UInt32.max) else { return }
        let packNumber: UInt32
        if let n = packNumbers[pack] { packNumber = n } else {
            packNumber = UInt32(packs.count)
            packs.append(pack)
            packNumbers[pack] = packNumber
        }
        if count == entryCapacity { growEntries(to: entryCapacity + entryCapacity / 2) }
        if 2 * (count + 1) > slotMask + 1 { rehash(slotCount: (slotMask + 1) * 2) }
        (entries + count).initialize(to: Entry(id, pack: packNumber, offset: UInt32(offset), length: UInt32(length)))
        var s = Int(truncatingIfNeeded: id.low) & slotMask
        while slots[s] != 0 { s = (s + 1) & slotMask }
        slots[s] = UInt32(count + 1)
        count += 1
    }
}
