import BlockIO

/// Where the live disk's bytes are: the base flat file, and while a checkpoint is open the
/// overlay for the blocks it holds (nbdkit's cow filter: the block store, apart from the
/// request handling in `FilteredDisk`).
///
/// A value made per request from the disk's current overlay; the caller holds the disk's I/O
/// lock (shared), so the overlay cannot come or go meanwhile. Writes and zeroes take one
/// block walk: a block the overlay takes goes there (copy-on-write for a partial block), one
/// it does not take (a merge is running and the block is not in it) goes to the base.
struct LiveBlocks {
    let image: DiskImage
    let overlay: Overlay?
    let granularity: UInt64

    var size: UInt64 { image.size }

    /// Which files a request changed, so FUA makes each of them durable.
    struct Touched {
        var base = false
        var overlay = false
    }

    /// What a request stores.
    enum Content {
        case data(UnsafeRawBufferPointer)
        /// Zeroes: a hole in the base, or allocated zeroes with `noHole`.
        case zeroes(noHole: Bool)
    }

    // MARK: - Reading

    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws {
        guard let overlay else { return try image.read(into: buffer, at: offset) }
        try forEachPiece(of: ByteRange(offset: offset, length: UInt64(buffer.count))) { block, within, piece in
            let out = slice(buffer, piece, from: offset)
            if try !overlay.read(block: block, within: within, into: out, base: { try image.read(into: $1, at: $0) }) {
                try image.read(into: out, at: piece.offset)
            }
        }
    }

    /// `read` when it needs no disk I/O and no waiting for a lock; false otherwise.
    func readIfCached(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) -> Bool {
        guard let overlay else { return image.readIfCached(into: buffer, at: offset) }
        var served = true
        forEachPiece(of: ByteRange(offset: offset, length: UInt64(buffer.count))) { block, within, piece in
            guard served else { return }
            let out = slice(buffer, piece, from: offset)
            switch overlay.readIfCached(block: block, within: within, into: out, base: { image.readIfCached(into: $1, at: $0) }) {
            case .served: break
            case .notInOverlay: served = image.readIfCached(into: out, at: piece.offset)
            case .wouldBlock: served = false
            }
        }
        return served
    }

    // MARK: - Writing

    /// Stores `content` over `range` and says which files it touched.
    func store(_ content: Content, in range: ByteRange) throws -> Touched {
        guard let overlay else {
            try storeInBase(content, piece: range, requestOffset: range.offset)
            return Touched(base: true)
        }
        var touched = Touched()
        try forEachPiece(of: range) { block, within, piece in
            let taken: Bool
            switch content {
            case .data(let bytes):
                let data = UnsafeRawBufferPointer(rebasing: bytes[Int(piece.offset - range.offset)..<Int(piece.end - range.offset)])
                taken = try overlay.write(data, at: piece.offset, base: readBase)
            case .zeroes where within == 0 && piece.end == min((block + 1) * granularity, size):
                taken = try overlay.zeroBlock(block)
            case .zeroes:
                let zeroes = [UInt8](repeating: 0, count: Int(piece.length))
                taken = try zeroes.withUnsafeBytes { try overlay.write($0, at: piece.offset, base: readBase) }
            }
            if taken {
                touched.overlay = true
            } else {
                try storeInBase(content, piece: piece, requestOffset: range.offset)
                touched.base = true
            }
        }
        return touched
    }

    /// Makes every file in `touched` durable.
    func makeDurable(_ touched: Touched) throws {
        if touched.overlay { try overlay?.flush() }
        if touched.base { try image.sync() }
    }

    private func storeInBase(_ content: Content, piece: ByteRange, requestOffset: UInt64) throws {
        switch content {
        case .data(let bytes):
            try image.write(UnsafeRawBufferPointer(rebasing: bytes[Int(piece.offset - requestOffset)..<Int(piece.end - requestOffset)]),
                            at: piece.offset)
        case .zeroes(let noHole):
            if noHole { try image.writeZeroes(piece) } else { try image.punchHole(piece) }
        }
    }

    /// Reads the base for copy-on-write (the rest of a partly written sub-block); past the end
    /// of the disk (the last block may be partial) reads as zeroes.
    private func readBase(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        let count = offset >= size ? 0 : Int(min(UInt64(buffer.count), size - offset))
        if count < buffer.count {
            UnsafeMutableRawBufferPointer(rebasing: buffer[count...]).initializeMemory(as: UInt8.self, repeating: 0)
        }
        try image.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<count]), at: offset)
    }

    // MARK: - The block walk

    /// Calls `body(block, offsetWithinBlock, piece)` for each piece of `range` inside one
    /// block, in order.
    func forEachPiece(of range: ByteRange, _ body: (UInt64, Int, ByteRange) throws -> Void) rethrows {
        var at = range.offset
        while at < range.end {
            let block = at / granularity
            let within = at - block * granularity
            let n = min(range.end - at, granularity - within)
            try body(block, Int(within), ByteRange(offset: at, length: n))
            at += n
        }
    }

    private func slice(_ buffer: UnsafeMutableRawBufferPointer, _ piece: ByteRange, from offset: UInt64) -> UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(rebasing: buffer[Int(piece.offset - offset)..<Int(piece.end - offset)])
    }
}
