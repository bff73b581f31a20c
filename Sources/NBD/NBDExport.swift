/// What a server says about one export during the handshake.
public struct NBDExportInfo: Sendable, Equatable {
    /// The export name clients ask for ("" is the default export).
    public var name: String
    /// A human-readable description (NBD_INFO_DESCRIPTION), may be empty.
    public var description: String
    /// Size in bytes. Requests past it get `EINVAL`.
    public var size: UInt64
    /// Writes, trims and write-zeroes get `EPERM`; the READ_ONLY flag is advertised.
    public var readOnly: Bool
    public var canTrim: Bool
    public var canWriteZeroes: Bool
    public var canFlush: Bool
    public var canFUA: Bool
    /// Advertise CAN_MULTI_CONN: a flush on one connection covers writes done on every connection.
    public var canMultiConn: Bool
    /// The meta context names this export answers BLOCK_STATUS for, e.g. `base:allocation`,
    /// `qemu:dirty-bitmap:active`. Their order fixes the context IDs handed to clients.
    public var metaContexts: [String]
    public var minimumBlockSize: UInt32
    public var preferredBlockSize: UInt32

    public init(name: String, description: String = "", size: UInt64, readOnly: Bool = false,
                canTrim: Bool = true, canWriteZeroes: Bool = true, canFlush: Bool = true, canFUA: Bool = true,
                canMultiConn: Bool = false, metaContexts: [String] = ["base:allocation"],
                minimumBlockSize: UInt32 = 1, preferredBlockSize: UInt32 = 4096) {
        self.name = name
        self.description = description
        self.size = size
        self.readOnly = readOnly
        self.canTrim = canTrim
        self.canWriteZeroes = canWriteZeroes
        self.canFlush = canFlush
        self.canFUA = canFUA
        self.canMultiConn = canMultiConn
        self.metaContexts = metaContexts
        self.minimumBlockSize = minimumBlockSize
        self.preferredBlockSize = preferredBlockSize
    }

    /// The 16-bit transmission flags for this export.
    var transmissionFlags: UInt16 {
        typealias F = NBDProtocol.TransmissionFlag
        var flags = F.hasFlags
        if readOnly { flags |= F.readOnly }
        if canFlush { flags |= F.sendFlush }
        if canFUA { flags |= F.sendFUA }
        if canTrim && !readOnly { flags |= F.sendTrim }
        if canWriteZeroes && !readOnly { flags |= F.sendWriteZeroes }
        if canMultiConn { flags |= F.canMultiConn }
        return flags
    }
}

/// One block status descriptor: `length` bytes with the context's status `flags`.
///
/// For `base:allocation`, bit 0 is HOLE and bit 1 is ZERO. For `qemu:dirty-bitmap:NAME`,
/// bit 0 is DIRTY (QEMU's semantics exactly).
public struct NBDBlockStatusExtent: Sendable, Equatable, Hashable {
    public var length: UInt32
    public var flags: UInt32

    public init(length: UInt32, flags: UInt32) {
        self.length = length
        self.flags = flags
    }
}

/// A disk the server serves. The server validates every request (bounds, flags, read-only)
/// before calling, so an export sees only in-range, well-formed calls.
///
/// All methods but `readIfCached` are called on a thread pool and may block; several may run
/// at once, also for the same connection. The server sends a request's reply only after its call returned, so
/// an export that records a change before writing (the filter) keeps "mark before acknowledge".
/// What the client sees of an error is decided in one place, `nbdError(for:)`, which the server
/// calls for every error a call threw: the default passes `NBDError` through, maps
/// `BlockIOError` by its code and makes anything else `EIO`; an export with errors of its own
/// (the filter's) gives its own mapping instead of catching in every method.
public protocol NBDExport: Sendable {
    var info: NBDExportInfo { get }
    /// Fills `buffer` with the bytes at `offset` (`buffer.count` bytes, at most 32 MiB).
    func read(offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws
    /// The fast path of `read`, called on the event loop for small reads: fill `buffer` only
    /// if that needs no disk I/O and no lock another thread may hold for long (see
    /// `BlockFile.readIfCached`), and return true. Return false for anything else (data not cached,
    /// a lock busy, an error): the server then calls `read` on the thread pool, and that call
    /// reports errors. It must never block. The default returns false.
    func readIfCached(offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) -> Bool
    /// Writes `data` at `offset`. With `fua` the data must be durable before returning.
    func write(offset: UInt64, data: UnsafeRawBufferPointer, fua: Bool) throws
    func trim(offset: UInt64, length: UInt32, fua: Bool) throws
    /// Makes the range read as zeroes; with `noHole` it must stay allocated.
    func writeZeroes(offset: UInt64, length: UInt32, noHole: Bool, fua: Bool) throws
    func flush() throws
    /// Extents for `context` (one of `info.metaContexts`) starting exactly at `offset`.
    /// The server drops zero-length extents, clips the list to the request and refuses an empty
    /// answer with `EIO` (it never invents a status of 0: for a dirty bitmap 0 means clean).
    func blockStatus(context: String, offset: UInt64, length: UInt32) throws -> [NBDBlockStatusExtent]
    /// The NBD error (so the errno on the wire) for an error one of the calls above threw.
    func nbdError(for error: any Error) -> NBDError
}

extension NBDExport {
    public func readIfCached(offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) -> Bool { false }
    public func nbdError(for error: any Error) -> NBDError { NBDError.from(error) }
}

/// The set of exports a server offers.
public protocol NBDExportProvider: Sendable {
    /// The names NBD_OPT_LIST reports.
    func exportNames() -> [String]
    /// The export for a name; "" is the default export, if there is one.
    func export(named name: String) -> (any NBDExport)?
}
