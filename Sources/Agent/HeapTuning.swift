import Glibc

/// Keeps the agent's peak memory close to what it really holds.
///
/// glibc raises its mmap threshold every time a large block is freed (up to 32 MiB), so
/// after the first pack buffer (16 MiB) or segment buffer (4 MiB) is released, later ones
/// come from the per-thread heaps and their memory is never given back: a 1 GiB full
/// backup peaked at 136 MiB, 84 MiB with a fixed threshold. A fixed threshold switches the
/// dynamic adjustment off, so large transient buffers are mapped and unmapped and small
/// ones (chunks, envelopes) stay on the fast heap path.
enum HeapTuning {
    static let mmapThreshold: Int32 = 256 << 10

    /// Idempotent; process-wide (the agent runs one job per process).
    static func applyOnce() {
        _ = applied
    }

    /// `M_MMAP_THRESHOLD` in <malloc.h>, part of glibc's ABI.
    private static let mMmapThreshold: Int32 = -3

    private static let applied: Bool = {
        // <malloc.h> is not in the Glibc module map; look mallopt up instead of adding a
        // shim. Without it (another libc) the default behaviour simply stays.
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "mallopt") else { return false }
        typealias Mallopt = @convention(c) (Int32, Int32) -> Int32
        return unsafeBitCast(symbol, to: Mallopt.self)(mMmapThreshold, mmapThreshold) == 1
    }()
}
