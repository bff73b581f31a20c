import BlockIO

/// The in-memory dirty map of one disk: a one-byte epoch tag per block (VMware ctk / blksnap
/// byte map), a "reads as zero" bit per block, and, while a checkpoint is open, an "active"
/// bitmap that holds new marks apart so the checkpoint's view stays frozen.
///
/// Epochs: sequence `lastClosed` is the last change ID closed by a checkpoint; marks belong to
/// epoch `lastClosed + 1`. A tag `t > 0` means "last changed in epoch `baseSequence + t`"; 0
/// means "not changed after `baseSequence`". Invariant: `lastClosed + 1 - baseSequence <= 255`,
/// kept by rebasing when a checkpoint would break it.
///
/// Pure logic, no I/O, no locking: `ChangeTracker` owns one inside its mutex.
struct DirtyMap: Sendable {
    let diskSize: UInt64
    let granularity: UInt64
    let shift: UInt64
    let blockCount: Int
    var tags: [UInt8]
    var zero: BlockBitmap
    /// Non-nil exactly while a checkpoint is open.
    var active: BlockBitmap?
    var activeZero: BlockBitmap?
    var baseSequence: UInt64
    var lastClosed: UInt64

    /// The largest relative tag (one byte).
    static let maximumRelativeEpoch: UInt64 = 255
    /// After a rebase, the current epoch sits this many epochs above the new base, so at least
    /// `keptEpochsAfterRebase - 1` closed change IDs stay answerable (191 checkpoints: half a
    /// year of nightly backups), and rebases happen once every 64 checkpoints.
    static let keptEpochsAfterRebase: UInt64 = 192

    static func blockCount(diskSize: UInt64, granularity: UInt64) -> Int {
        Int((diskSize + granularity - 1) / granularity)
    }

    init(diskSize: UInt64, granularity: UInt64) {
        self.diskSize = diskSize
        self.granularity = granularity
        shift = UInt64(granularity.trailingZeroBitCount)
        blockCount = Self.blockCount(diskSize: diskSize, granularity: granularity)
        tags = [UInt8](repeating: 0, count: blockCount)
        zero = BlockBitmap(count: blockCount)
        baseSequence = 0
        lastClosed = 0
    }

    /// Restores a decoded map; the caller (the state file decoder) has checked the shapes.
    init(diskSize: UInt64, granularity: UInt64, tags: [UInt8], zero: BlockBitmap, active: BlockBitmap?,
         activeZero: BlockBitmap?, baseSequence: UInt64, lastClosed: UInt64) {
        self.diskSize = diskSize
        self.granularity = granularity
        shift = UInt64(granularity.trailingZeroBitCount)
        blockCount = tags.count
        self.tags = tags
        self.zero = zero
        self.active = active
        self.activeZero = activeZero
        self.baseSequence = baseSequence
        self.lastClosed = lastClosed
    }

    var checkpointOpen: Bool { active != nil }
    var currentEpoch: UInt64 { lastClosed + 1 }

    /// The blocks a non-empty byte range inside the disk touches (rounded outward).
    func blocks(touching range: ByteRange) -> Range<Int> {
        Int(range.offset >> shift)..<Int((range.end - 1) >> shift) + 1
    }

    /// Marks a write: every touched block changed, none reads as zero any more.
    mutating func markWrite(_ range: ByteRange) {
        guard !range.isEmpty else { return }
        let blocks = blocks(touching: range)
        setChanged(blocks)
        setZero(blocks, to: false)
    }

    /// Marks a trim / write-zeroes: every touched block changed; blocks wholly covered (the
    /// partial last block of the disk counts as whole when covered to the disk's end) read as zero.
    mutating func markZero(_ range: ByteRange) {
        guard !range.isEmpty else { return }
        let blocks = blocks(touching: range)
        setChanged(blocks)
        setZero(blocks, to: false)
        let first = Int((range.offset + granularity - 1) >> shift)
        let last = range.end >= diskSize ? blockCount : Int(range.end >> shift)
        if first < last { setZero(first..<last, to: true) }
    }

    private mutating func setChanged(_ blocks: Range<Int>) {
        if active != nil {
            active!.set(blocks, to: true)
        } else {
            let tag = UInt8(currentEpoch - baseSequence)
            tags.withUnsafeMutableBufferPointer { $0[blocks].update(repeating: tag) }
        }
    }

    private mutating func setZero(_ blocks: Range<Int>, to value: Bool) {
        if active != nil { activeZero!.set(blocks, to: value) } else { zero.set(blocks, to: value) }
    }

    /// Closes the current epoch (a checkpoint): returns its sequence and holds later marks in
    /// the active bitmap until `fold()`. Rebases first if the next epoch would overflow a tag.
    mutating func closeEpoch() -> UInt64 {
        lastClosed += 1
        if currentEpoch - baseSequence > Self.maximumRelativeEpoch {
            rebase(to: currentEpoch - Self.keptEpochsAfterRebase)
        }
        active = BlockBitmap(count: blockCount)
        activeZero = BlockBitmap(count: blockCount)
        return lastClosed
    }

    /// Raises `baseSequence`, shifting tags down and clamping at 0 ("not changed since base").
    mutating func rebase(to newBase: UInt64) {
        guard newBase > baseSequence else { return }
        let delta = newBase - baseSequence
        let clamp = UInt8(min(delta, 255))
        for b in 0..<blockCount where tags[b] != 0 {
            if tags[b] > clamp {
                tags[b] -= clamp
            } else {
                tags[b] = 0
                zero[b] = false
            }
        }
        baseSequence = newBase
    }

    /// Ends an open checkpoint: the marks held apart join the current epoch. Commit and abort
    /// both fold, so no mark is ever dropped.
    mutating func fold() {
        guard let held = active, let heldZero = activeZero else { return }
        let tag = UInt8(currentEpoch - baseSequence)
        for (w, word) in held.words.enumerated() where word != 0 {
            var bits = word
            while bits != 0 {
                let b = w * 64 + bits.trailingZeroBitCount
                tags[b] = tag
                zero[b] = heldZero[b]
                bits &= bits - 1
            }
        }
        active = nil
        activeZero = nil
    }

    /// Which blocks a query reports.
    enum Selection {
        /// Changed after sequence `s` (`baseSequence <= s <= lastClosed`), including held marks.
        case since(UInt64)
        /// Changed after the last checkpoint.
        case active
        /// With a checkpoint open: changed in (`lower`, `lastClosed`]; nil lower = whole disk.
        case checkpoint(lower: UInt64?)
    }

    /// 0 = unchanged, 1 = changed, 2 = changed and reads as zero.
    @inline(__always)
    private func classify(_ b: Int, _ selection: Selection) -> UInt8 {
        switch selection {
        case .since(let s):
            // With a checkpoint open, a since-query describes the frozen base (what the
            // agent reads): a block written after the checkpoint is reported changed, and
            // reads as zero only if the frozen base's block does (its tag and zero bit are
            // frozen; the live disk's zero bit would be wrong for the base).
            let frozenChanged = tags[b] > UInt8(s - baseSequence)
            if let active, active[b] { return frozenChanged && zero[b] ? 2 : 1 }
            return frozenChanged ? (zero[b] ? 2 : 1) : 0
        case .active:
            if let active { return active[b] ? (activeZero![b] ? 2 : 1) : 0 }
            return tags[b] > UInt8(lastClosed - baseSequence) ? (zero[b] ? 2 : 1) : 0
        case .checkpoint(let lower):
            guard let lower else { return 1 }
            return tags[b] > UInt8(lower - baseSequence) ? (zero[b] ? 2 : 1) : 0
        }
    }

    /// Changed runs of blocks inside `blocks`, at most `limit` of them. Returns the runs
    /// (block range, reads as zero) and the block where scanning stopped: every changed block
    /// before it is reported, none after it.
    func runs(in blocks: Range<Int>, limit: Int, selection: Selection) -> (runs: [(Range<Int>, Bool)], end: Int) {
        var out: [(Range<Int>, Bool)] = []
        var b = blocks.lowerBound
        var runStart = -1
        var runKind: UInt8 = 0
        while b < blocks.upperBound {
            let kind = classify(b, selection)
            if kind != runKind {
                if runKind != 0 { out.append((runStart..<b, runKind == 2)) }
                if kind != 0 && out.count >= limit { return (out, b) }
                runStart = b
                runKind = kind
            }
            b += 1
        }
        if runKind != 0 { out.append((runStart..<b, runKind == 2)) }
        return (out, blocks.upperBound)
    }

    var memoryFootprint: Int {
        tags.count + zero.memoryFootprint + (active?.memoryFootprint ?? 0) + (activeZero?.memoryFootprint ?? 0)
    }
}
