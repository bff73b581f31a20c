import BlockIO

/// A flat file served as an export: a plain backend for tests and tools, and the model for
/// the filter's export. `base:allocation` comes from SEEK_DATA / SEEK_HOLE.
public final class FileExport: NBDExport {
    public let info: NBDExportInfo
    public let file: BlockFile

    /// - Parameters:
    ///   - path: the flat file; its current size is the export size.
    ///   - name: the export name ("" for the default export).
    ///   - readOnly: open the file read-only and advertise READ_ONLY.
    public init(path: String, name: String = "", description: String = "", readOnly: Bool = false,
                canMultiConn: Bool = true) throws {
        file = try BlockFile(path: path, mode: readOnly ? .readOnly : .readWrite)
        info = NBDExportInfo(name: name, description: description, size: try file.size(), readOnly: readOnly,
                             canMultiConn: canMultiConn, metaContexts: [NBDProtocol.baseAllocation])
    }

    public func read(offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        try file.read(into: buffer, at: offset)
    }

    public func readIfCached(offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) -> Bool {
        file.readIfCached(into: buffer, at: offset)
    }

    public func write(offset: UInt64, data: UnsafeRawBufferPointer, fua: Bool) throws {
        try file.write(data, at: offset)
        if fua { try file.syncData() }
    }

    public func trim(offset: UInt64, length: UInt32, fua: Bool) throws {
        try file.punchHole(ByteRange(offset: offset, length: UInt64(length)))
        if fua { try file.syncData() }
    }

    public func writeZeroes(offset: UInt64, length: UInt32, noHole: Bool, fua: Bool) throws {
        let range = ByteRange(offset: offset, length: UInt64(length))
        if noHole { try file.writeZeroes(range) } else { try file.punchHole(range) }
        if fua { try file.syncData() }
    }

    public func flush() throws {
        try file.sync()
    }

    public func blockStatus(context: String, offset: UInt64, length: UInt32) throws -> [NBDBlockStatusExtent] {
        guard context == NBDProtocol.baseAllocation else {
            throw NBDError(.invalid, "FileExport has no meta context \(context)")
        }
        let range = ByteRange(offset: offset, length: UInt64(length))
        return Self.allocationExtents(data: try file.dataRanges(in: range), in: range)
    }

    /// `base:allocation` extents for `range` given its data ranges: data is 0, a hole is
    /// HOLE|ZERO (a hole in a flat file reads as zeroes).
    public static func allocationExtents(data: [ByteRange], in range: ByteRange) -> [NBDBlockStatusExtent] {
        var out: [NBDBlockStatusExtent] = []
        var at = range.offset
        func add(_ end: UInt64, _ flags: UInt32) {
            guard end > at else { return }
            out.append(NBDBlockStatusExtent(length: UInt32(end - at), flags: flags))
            at = end
        }
        for d in data.coalesced() {
            guard let clipped = d.intersection(range) else { continue }
            add(clipped.offset, NBDProtocol.stateHole | NBDProtocol.stateZero)
            add(clipped.end, 0)
        }
        add(range.end, NBDProtocol.stateHole | NBDProtocol.stateZero)
        return out
    }
}

/// A fixed set of exports, looked up by name.
public struct NBDExportSet: NBDExportProvider {
    private let exports: [String: any NBDExport]
    private let order: [String]
    private let defaultName: String?

    /// - Parameter defaultExport: the name served for "" when no export is called ""
    ///   (the first export when nil).
    public init(_ exports: [any NBDExport], defaultExport: String? = nil) {
        var map: [String: any NBDExport] = [:]
        var order: [String] = []
        for e in exports where map[e.info.name] == nil {
            map[e.info.name] = e
            order.append(e.info.name)
        }
        self.exports = map
        self.order = order
        defaultName = defaultExport ?? order.first
    }

    public func exportNames() -> [String] { order }

    public func export(named name: String) -> (any NBDExport)? {
        if let e = exports[name] { return e }
        if name.isEmpty, let d = defaultName { return exports[d] }
        return nil
    }
}
