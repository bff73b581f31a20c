/// One bit per block, in 64-bit words.
struct BlockBitmap: Sendable, Equatable {
    private(set) var words: [UInt64]
    let count: Int

    init(count: Int) {
        self.count = count
        words = [UInt64](repeating: 0, count: (count + 63) / 64)
    }

    init?(count: Int, words: [UInt64]) {
        guard words.count == (count + 63) / 64 else { return nil }
        self.count = count
        self.words = words
        // Bits past `count` must be clear, so word scans never report a block past the disk.
        if count % 64 != 0, let last = words.last, last >> UInt64(count % 64) != 0 { return nil }
    }

    subscript(block: Int) -> Bool {
        get { words[block >> 6] & (1 << UInt64(block & 63)) != 0 }
        set {
            if newValue { words[block >> 6] |= 1 << UInt64(block & 63) } else { words[block >> 6] &= ~(1 << UInt64(block & 63)) }
        }
    }

    /// Sets or clears every bit in `blocks`, a word at a time.
    mutating func set(_ blocks: Range<Int>, to value: Bool) {
        guard !blocks.isEmpty else { return }
        var b = blocks.lowerBound
        while b < blocks.upperBound {
            let word = b >> 6, bit = b & 63
            let n = min(64 - bit, blocks.upperBound - b)
            let mask: UInt64 = n == 64 ? ~0 : ((1 << UInt64(n)) - 1) << UInt64(bit)
            if value { words[word] |= mask } else { words[word] &= ~mask }
            b += n
        }
    }

    var memoryFootprint: Int { words.count * 8 }
}
