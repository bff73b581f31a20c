import BlockIO
// Only for FileDescriptor.rawValue (BlockFile.descriptor); SystemPackage comes with BlockIO.
import SystemPackage
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Reads that never wait for the disk: `preadv2(RWF_NOWAIT)` copies what the page cache
/// holds and fails with `EAGAIN` instead of starting disk I/O. This is what lets the server
/// answer a read on the event loop: cached data costs a memory copy, anything else goes to
/// the thread pool and blocks nobody.
public enum PageCacheRead {
    private typealias PReadV2 = @convention(c) (Int32, UnsafePointer<iovec>?, Int32, off_t, Int32) -> Int

    /// `RWF_NOWAIT` from linux/fs.h (kernel ABI, stable since Linux 4.14).
    private static let nowait: Int32 = 0x0000_0008

    /// Glibc's Swift overlay hides `preadv2` (it is declared only with _GNU_SOURCE), so it is
    /// looked up at run time; nil on a libc without it, and every read then takes the slow path.
    private static let preadv2: PReadV2? = {
        guard let handle = dlopen(nil, RTLD_NOW), let symbol = dlsym(handle, "preadv2") else { return nil }
        return unsafeBitCast(symbol, to: PReadV2.self)
    }()

    /// Set once the kernel or file system refused RWF_NOWAIT, so we stop asking.
    private static let unsupported = Atomic<Bool>(false)

    /// Fills `buffer` from `file` at `offset` if every byte is in the page cache.
    /// Bytes past the end of the file read as zeroes (as `BlockFile.read` does).
    /// - Returns: false when the read would have to wait for the disk, or failed for any
    ///   reason; the caller then does an ordinary (blocking) read, which reports real errors.
    ///   `buffer` may be partly overwritten in that case.
    public static func read(_ file: BlockFile, into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) -> Bool {
        let descriptor = file.descriptor.rawValue
        guard let preadv2, !unsupported.load(ordering: .relaxed), let base = buffer.baseAddress else {
            return buffer.isEmpty
        }
        var done = 0
        while done < buffer.count {
            var iov = iovec(iov_base: base + done, iov_len: buffer.count - done)
            let n = preadv2(descriptor, &iov, 1, off_t(offset) + off_t(done), nowait)
            if n < 0 {
                switch errno {
                case EINTR: continue
                case EOPNOTSUPP, EINVAL, ENOSYS: unsupported.store(true, ordering: .relaxed)
                default: break
                }
                return false
            }
            if n == 0 {
                (base + done).initializeMemory(as: UInt8.self, repeating: 0, count: buffer.count - done)
                return true
            }
            // A short read means only part is cached: the next call fails with EAGAIN or gets more.
            done += n
        }
        return true
    }
}
