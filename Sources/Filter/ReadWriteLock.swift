#if canImport(Glibc)
import Glibc
#endif

/// A reader-writer lock (pthread_rwlock).
///
/// I/O on a filtered disk takes it shared; the moments that must see no I/O in flight
/// (closing an epoch at a checkpoint, one batch of an overlay merge) take it exclusive, so
/// every write lands wholly before or wholly after them.
final class ReadWriteLock: @unchecked Sendable {
    private let lock = UnsafeMutablePointer<pthread_rwlock_t>.allocate(capacity: 1)

    init() {
        // Writer preference, so a merge or a checkpoint is not starved by a busy client.
        var attr = pthread_rwlockattr_t()
        pthread_rwlockattr_init(&attr)
        pthread_rwlockattr_setkind_np(&attr, Int32(PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP))
        pthread_rwlock_init(lock, &attr)
        pthread_rwlockattr_destroy(&attr)
    }

    deinit {
        pthread_rwlock_destroy(lock)
        lock.deallocate()
    }

    func withShared<T>(_ body: () throws -> T) rethrows -> T {
        pthread_rwlock_rdlock(lock)
        defer { pthread_rwlock_unlock(lock) }
        return try body()
    }

    /// Runs `body` with the lock held shared if that needs no waiting; nil when a writer
    /// holds or waits for the lock (for callers that must never block, like the event loop).
    func withSharedIfAvailable<T>(_ body: () throws -> T) rethrows -> T? {
        guard pthread_rwlock_tryrdlock(lock) == 0 else { return nil }
        defer { pthread_rwlock_unlock(lock) }
        return try body()
    }

    func withExclusive<T>(_ body: () throws -> T) rethrows -> T {
        pthread_rwlock_wrlock(lock)
        defer { pthread_rwlock_unlock(lock) }
        return try body()
    }
}
