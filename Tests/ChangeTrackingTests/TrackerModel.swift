import BlockIO

/// A plain model of the tracker's promises: per block, the last epoch it changed in and
/// whether that change left it reading as zero. No tags, no rebasing tricks.
struct TrackerModel {
    let diskSize: UInt64
    let granularity: UInt64
    var epochOf: [Int: UInt64] = [:]
    var zeroOf: [Int: Bool] = [:]
    /// Marks made while a checkpoint is open (block → reads as zero).
    var held: [Int: Bool]?
    var lastClosed: UInt64 = 0
    var base: UInt64 = 0
    var lastCommitted: UInt64?
    var openPrevious: UInt64?

    var blockCount: Int { Int((diskSize + granularity - 1) / granularity) }

    private mutating func set(_ b: Int, zero: Bool) {
        if held != nil {
            held![b] = zero
        } else {
            epochOf[b] = lastClosed + 1
            zeroOf[b] = zero
        }
    }

    mutating func write(_ r: ByteRange) {
        for b in blocks(of: r, granularity: granularity) { set(b, zero: false) }
    }

    mutating func zero(_ r: ByteRange) {
        for b in blocks(of: r, granularity: granularity) {
            let start = UInt64(b) * granularity, end = min(start + granularity, diskSize)
            set(b, zero: r.offset <= start && r.end >= end)
        }
    }

    mutating func checkpoint() -> UInt64 {
        lastClosed += 1
        // The tracker's documented rule: one-byte tags, rebase keeping 192 epochs.
        if lastClosed + 1 - base > 255 { base = lastClosed + 1 - 192 }
        openPrevious = lastCommitted.flatMap { $0 >= base ? $0 : nil }
        held = [:]
        return lastClosed
    }

    mutating func release(commit: Bool) {
        for (b, z) in held ?? [:] {
            epochOf[b] = lastClosed + 1
            zeroOf[b] = z
        }
        held = nil
        if commit { lastCommitted = lastClosed }
    }

    func since(_ s: UInt64) -> [Int: Bool] {
        var out: [Int: Bool] = [:]
        for (b, e) in epochOf where e > s { out[b] = zeroOf[b] }
        // Blocks held since an open checkpoint are changed; they read as zero only if the
        // frozen base's block does (the query describes the base the agent reads).
        for b in (held ?? [:]).keys { out[b] = (epochOf[b] ?? 0) > s && zeroOf[b] == true }
        return out
    }

    func activeView() -> [Int: Bool] {
        if let held { return held }
        return since(lastClosed)
    }

    func checkpointView() -> [Int: Bool] {
        guard let p = openPrevious else {
            return Dictionary(uniqueKeysWithValues: (0..<blockCount).map { ($0, false) })
        }
        var out: [Int: Bool] = [:]
        for (b, e) in epochOf where e > p { out[b] = zeroOf[b] }
        return out
    }
}
