import BlockIO
import ChangeTracking
import Synchronization
import TrackerControl

/// The request adapter: what the NBD exports call. Every change is marked in the tracker
/// before the block store takes it, with the request's blocks held (see `BlockRangeLock`).
extension FilteredDisk {
    // MARK: - The write path

    var overlay: Overlay? { overlayBox.withLock { $0 } }

    public var hasCheckpoint: Bool { overlay != nil }

    func checkRange(_ offset: UInt64, _ count: UInt64) throws {
        guard offset <= size, count <= size - offset else {
            throw FilterError(.invalidArgument, "byte range [\(offset), \(offset &+ count)) is past the end of disk \(name) (\(size) bytes)")
        }
    }

    /// The blocks a non-empty byte range touches.
    func blocks(of range: ByteRange) -> Range<UInt64> {
        (range.offset / granularity)..<((range.end - 1) / granularity + 1)
    }

    /// The block store as it is now (call with `io` held).
    var liveBlocks: LiveBlocks { LiveBlocks(image: image, overlay: overlay, granularity: granularity) }

    /// Reads the live disk: the overlay where it holds a block, the base elsewhere.
    public func read(offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        try checkRange(offset, UInt64(buffer.count))
        try io.withShared { try liveBlocks.read(into: buffer, at: offset) }
    }

    /// `read` if it needs no disk I/O and no waiting for a lock (the NBD server calls it on its
    /// event loop); false otherwise, and the caller then uses `read`.
    public func readIfCached(offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) -> Bool {
        guard offset <= size, UInt64(buffer.count) <= size - offset else { return false }
        // Shared like `read`, so a checkpoint or a merge batch never sees this read half done.
        return io.withSharedIfAvailable { liveBlocks.readIfCached(into: buffer, at: offset) } ?? false
    }

    /// The change ID of the checkpoint whose frozen base can be read now, or nil.
    public var readableCheckpointID: String? { readableCheckpoint.withLock { $0 } }

    /// Reads the base file: the disk exactly as it was at checkpoint `checkpointID`.
    /// - Throws: `noCheckpoint` once that checkpoint is being released or gone: the base
    ///   then holds other bytes (merged writes, or another checkpoint's point in time).
    public func readCheckpoint(_ checkpointID: String, offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        try checkRange(offset, UInt64(buffer.count))
        try io.withShared {
            try requireReadable(checkpointID)
            try image.read(into: buffer, at: offset)
        }
    }

    /// `readCheckpoint` if every byte is in the page cache and no lock is busy; false otherwise.
    public func readCheckpointIfCached(_ checkpointID: String, offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) -> Bool {
        guard offset <= size, UInt64(buffer.count) <= size - offset else { return false }
        let served = io.withSharedIfAvailable { () -> Bool in
            guard readableCheckpoint.withLock({ $0 }) == checkpointID else { return false }
            return image.readIfCached(into: buffer, at: offset)
        }
        return served ?? false
    }

    /// Call with `io` held (shared is enough: a release clears the ID before its first merge
    /// batch, and every batch holds `io` exclusive).
    func requireReadable(_ checkpointID: String) throws {
        let current = readableCheckpoint.withLock { $0 }
        guard current == checkpointID else {
            throw FilterError(.noCheckpoint, "checkpoint \(checkpointID) of disk \(name) has been released\(current.map { "; checkpoint \($0) is open now" } ?? ""); this connection belonged to the released checkpoint: reconnect to \(name)\(FilterExportProvider.checkpointSuffix) to read the current one")
        }
    }

    /// WRITE: mark, then store.
    public func write(offset: UInt64, bytes: UnsafeRawBufferPointer, fua: Bool) throws {
        try checkRange(offset, UInt64(bytes.count))
        guard bytes.count > 0 else { return }
        try apply(.data(bytes), to: ByteRange(offset: offset, length: UInt64(bytes.count)), fua: fua)
    }

    /// TRIM and WRITE_ZEROES: both leave the range reading as zeroes here (`noHole` asks
    /// for allocated zeroes instead of a hole).
    public func zero(_ range: ByteRange, noHole: Bool, fua: Bool) throws {
        try checkRange(range.offset, range.length)
        guard range.length > 0 else { return }
        try apply(.zeroes(noHole: noHole), to: range, fua: fua)
    }

    /// The write path's one sequence: hold the blocks, mark, store, make durable for FUA.
    private func apply(_ content: LiveBlocks.Content, to range: ByteRange, fua: Bool) throws {
        let zero: Bool
        if case .zeroes = content { zero = true } else { zero = false }
        try io.withShared {
            try blockLocks.withBlocks(blocks(of: range)) {
                if zero { try tracker.markZero(range) } else { try tracker.markWrite(range) }
                hooks.withLock { $0.afterMark }?(zero, range)
                let store = liveBlocks
                let touched = try store.store(content, in: range)
                if fua { try makeDurable(touched, store) }
            }
        }
    }

    private func makeDurable(_ touched: LiveBlocks.Touched, _ store: LiveBlocks) throws {
        try store.makeDurable(touched)
        if touched.overlay { hooks.withLock { $0.synced }?(false) }
        if touched.base { hooks.withLock { $0.synced }?(true) }
    }

    /// FLUSH: the data (base and overlay) is durable. The tracking state needs nothing here:
    /// the activity log made every mark durable before its write was issued.
    public func flush() throws {
        try io.withShared {
            let store = liveBlocks
            try makeDurable(LiveBlocks.Touched(base: true, overlay: store.overlay != nil), store)
        }
    }
}
