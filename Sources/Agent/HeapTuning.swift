internal import CLinuxShims

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

    private static let applied: Bool = tessera_set_mmap_threshold(mmapThreshold) == 1
}
