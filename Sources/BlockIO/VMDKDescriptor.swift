/// A parsed VMDK text descriptor whose extents are flat (`FLAT` or `VMFS`).
///
/// Parsing is pure (bytes in, value or error out) so every refusal is testable without
/// files. Anything Tessera cannot read exactly is refused with a message that names the
/// problem and the way out; nothing is guessed. Unknown `key=value` lines and the whole
/// disk database (`ddb.*`) are kept but not interpreted: they carry no layout.
public struct VMDKDescriptor: Sendable, Equatable {
    /// Descriptors are small text files (qemu-img writes ~400 bytes); anything larger is refused
    /// before parsing, so a huge or hostile file cannot make us allocate or scan much.
    public static let sizeLimit = 64 * 1024
    public static let sectorSize: UInt64 = 512
    /// `parentCID` of a disk without a parent.
    public static let noParent: UInt32 = 0xffff_ffff

    /// One extent line: `RW 2048 FLAT "disk-flat.vmdk" 0`.
    public struct Extent: Sendable, Equatable {
        public enum Kind: String, Sendable, Equatable { case flat = "FLAT", vmfs = "VMFS" }
        public var access: DiskExtent.Access
        public var sectors: UInt64
        public var kind: Kind
        /// As written in the descriptor (relative to the descriptor's directory unless absolute).
        public var fileName: String
        public var offsetSectors: UInt64

        public init(access: DiskExtent.Access, sectors: UInt64, kind: Kind, fileName: String, offsetSectors: UInt64 = 0) {
            self.access = access
            self.sectors = sectors
            self.kind = kind
            self.fileName = fileName
            self.offsetSectors = offsetSectors
        }

        /// Bytes of the virtual disk this extent holds (validated not to overflow by `parse`).
        public var byteCount: UInt64 { sectors &* VMDKDescriptor.sectorSize }
        public var fileOffset: UInt64 { offsetSectors &* VMDKDescriptor.sectorSize }
    }

    public var version: Int
    public var contentID: UInt32
    public var parentContentID: UInt32
    public var subformat: VMDKSubformat
    public var extents: [Extent]
    /// `ddb.*` entries in file order, values unquoted.
    public var diskDatabase: [String: String]

    public init(version: Int = 1, contentID: UInt32, parentContentID: UInt32 = VMDKDescriptor.noParent,
                subformat: VMDKSubformat, extents: [Extent], diskDatabase: [String: String] = [:]) {
        self.version = version
        self.contentID = contentID
        self.parentContentID = parentContentID
        self.subformat = subformat
        self.extents = extents
        self.diskDatabase = diskDatabase
    }

    /// The virtual disk size: the sum of the extents.
    public var size: UInt64 { extents.reduce(0) { $0 &+ $1.byteCount } }

    // MARK: - Detection

    /// Magic numbers of VMDK files that hold data in grains rather than flat: a hosted sparse
    /// extent ("KDMV", also monolithicSparse and streamOptimized) and an ESX COW delta ("COWD").
    static let sparseMagics: [(bytes: [UInt8], name: String)] = [
        (Array("KDMV".utf8), "KDMV"), (Array("COWD".utf8), "COWD"),
    ]

    /// Whether a file starting with `prefix` is a text descriptor: its first line is
    /// `# Disk DescriptorFile`, or (qemu's probe) its first line that is neither blank nor a
    /// comment is `version=...`. Anything else is a raw disk.
    public static func looksLikeDescriptor(_ prefix: some Collection<UInt8>) -> Bool {
        var lines = prefix.prefix(4096).split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false).makeIterator()
        guard let first = lines.next() else { return false }
        if trimmed(first).elementsEqual("# Disk DescriptorFile".utf8) { return true }
        var line: ArraySlice<UInt8>? = ArraySlice(first)
        while let current = line {
            let t = trimmed(current)
            if !t.isEmpty && t.first != UInt8(ascii: "#") {
                return t.starts(with: "version=".utf8)
            }
            line = lines.next().map { ArraySlice($0) }
        }
        return false
    }

    private static func trimmed(_ bytes: some Collection<UInt8>) -> ArraySlice<UInt8> {
        var s = ArraySlice(bytes)
        while let c = s.first, c == 0x20 || c == 0x09 || c == 0x0d { s = s.dropFirst() }
        while let c = s.last, c == 0x20 || c == 0x09 || c == 0x0d { s = s.dropLast() }
        return s
    }

    // MARK: - Parsing

    /// Parses a descriptor.
    /// - Parameter source: the descriptor's path, for error messages.
    /// - Throws: `BlockIOError` `.corrupt` for text that is not a well-formed descriptor,
    ///   `.invalidArgument` for a well-formed one Tessera does not read (sparse, delta, ...).
    public static func parse(_ bytes: [UInt8], source: String) throws -> VMDKDescriptor {
        guard bytes.count <= sizeLimit else {
            throw BlockIOError(.corrupt, "\(source): the VMDK descriptor is \(bytes.count) bytes, more than the \(sizeLimit)-byte limit; a descriptor is a small text file, so this one is damaged or not a descriptor")
        }
        // qemu rewrites a descriptor after a write (new CID) in place, as a C string padded
        // with zero bytes: when the new CID has fewer hex digits than the old one, the old
        // text's last bytes stay behind the terminating zero. qemu reads up to the first zero,
        // and so do we, as long as what follows is such leftover text; binary bytes after a
        // zero mean this is not a descriptor.
        var bytes = bytes[...]
        if let zero = bytes.firstIndex(of: 0) {
            let leftover = bytes[zero...].allSatisfy { $0 == 0 || $0 == 9 || $0 == 10 || $0 == 13 || (32...126).contains($0) }
            guard leftover else {
                throw BlockIOError(.corrupt, "\(source): the VMDK descriptor is not text (a zero byte at offset \(zero)); it is damaged or not a descriptor")
            }
            bytes = bytes[..<zero]
        }
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw BlockIOError(.corrupt, "\(source): the VMDK descriptor is not valid UTF-8 text; it is damaged or not a descriptor")
        }

        var version: Int?, contentID: UInt32?, parentContentID: UInt32?, createType: String?
        var parentHint: String?
        var unsupportedExtent: BlockIOError?
        var extents: [Extent] = []
        var ddb: [String: String] = [:]
        var lineNumber = 0
        // "\r\n" is one Character in Swift, so split on both forms of line end.
        for rawLine in text.split(omittingEmptySubsequences: false, whereSeparator: { $0 == "\n" || $0 == "\r\n" }) {
            lineNumber += 1
            let line = rawLine.trimmingWhitespace()
            if line.isEmpty || line.hasPrefix("#") { continue }
            let here = "\(source) line \(lineNumber)"
            do {
                if let extent = try parseExtentLine(line, at: here) {
                    extents.append(extent)
                    continue
                }
            } catch let error as BlockIOError where error.code == .invalidArgument {
                // A well-formed extent we do not read: report the createType's problem first,
                // which names the whole disk kind, and this one only if the createType is fine.
                unsupportedExtent = unsupportedExtent ?? error
                continue
            }
            guard let eq = line.firstIndex(of: "=") else {
                throw BlockIOError(.corrupt, "\(here): cannot read \(quoted(line)); expected key=value, an extent line like RW 2048 FLAT \"disk-flat.vmdk\" 0, or a # comment")
            }
            let key = line[..<eq].trimmingWhitespace()
            let value = unquoted(line[line.index(after: eq)...].trimmingWhitespace())
            func once<T>(_ slot: T?) throws {
                if slot != nil { throw BlockIOError(.corrupt, "\(here): \(key) appears twice; the descriptor is damaged") }
            }
            switch key {
            case "version":
                try once(version)
                guard let v = Int(value), (1...3).contains(v) else {
                    throw BlockIOError(.invalidArgument, "\(here): descriptor version \(quoted(value)) is not supported; Tessera reads version=1 to 3")
                }
                version = v
            case "CID":
                try once(contentID)
                contentID = try hex32(value, key: "CID", at: here)
            case "parentCID":
                try once(parentContentID)
                parentContentID = try hex32(value, key: "parentCID", at: here)
            case "createType":
                try once(createType)
                createType = value
            case "parentFileNameHint":
                parentHint = value
            default:
                if key.hasPrefix("ddb.") { ddb[String(key)] = value }
                // Other keys (encoding, isNativeSnapshot, ...) carry no layout.
            }
        }

        guard let createType else {
            throw BlockIOError(.corrupt, "\(source): no createType line; this is not a complete VMDK descriptor (is the file damaged?)")
        }
        guard let subformat = VMDKSubformat(rawValue: createType) else {
            if sparseCreateTypes.contains(createType) {
                throw BlockIOError(.invalidArgument, "\(source): createType=\"\(createType)\" keeps its data in sparse grains, not flat extents; Tessera reads only flat disks: convert with qemu-img convert -O vmdk -o subformat=monolithicFlat \(source) OUT.vmdk")
            }
            throw BlockIOError(.invalidArgument, "\(source): createType=\(quoted(createType)) is not supported; Tessera reads monolithicFlat, twoGbMaxExtentFlat and vmfs: convert with qemu-img convert -O vmdk -o subformat=monolithicFlat \(source) OUT.vmdk")
        }
        if let parent = parentContentID, parent != noParent {
            let hint = parentHint.map { " (parent \($0))" } ?? ""
            throw BlockIOError(.invalidArgument, "\(source): parentCID=\(String(parent, radix: 16)) makes this a delta disk in a snapshot chain\(hint); Tessera reads only standalone flat disks: consolidate (delete) the snapshots first, or convert with qemu-img convert -O vmdk -o subformat=monolithicFlat \(source) OUT.vmdk")
        }
        if let parentHint {
            throw BlockIOError(.invalidArgument, "\(source): parentFileNameHint=\(quoted(parentHint)) makes this a delta disk in a snapshot chain; Tessera reads only standalone flat disks: consolidate (delete) the snapshots first")
        }
        if let unsupportedExtent { throw unsupportedExtent }
        guard !extents.isEmpty else {
            throw BlockIOError(.corrupt, "\(source): no extent lines; a VMDK descriptor must name at least one flat extent like RW 2048 FLAT \"disk-flat.vmdk\" 0")
        }
        var total: UInt64 = 0
        for (i, extent) in extents.enumerated() {
            let (sum, overflow) = total.addingReportingOverflow(extent.byteCount)
            guard !overflow, sum <= UInt64(Int64.max) else {
                throw BlockIOError(.corrupt, "\(source): extent \(i + 1) makes the disk larger than \(Int64.max) bytes; the sector counts are damaged")
            }
            total = sum
        }
        return VMDKDescriptor(version: version ?? 1, contentID: contentID ?? 0, parentContentID: parentContentID ?? noParent,
                              subformat: subformat, extents: extents, diskDatabase: ddb)
    }

    static let sparseCreateTypes: Set<String> = [
        "monolithicSparse", "twoGbMaxExtentSparse", "streamOptimized", "seSparse", "vmfsSparse",
    ]
    static let sparseExtentTypes: Set<String> = ["SPARSE", "VMFSSPARSE", "SESPARSE"]
    static let otherExtentTypes: Set<String> = ["VMFSRDM", "VMFSRAW", "ZERO"]
    static let accessWords: Set<String> = ["RW", "RDONLY", "NOACCESS"]

    /// Parses `ACCESS SECTORS TYPE "FILE" [OFFSET]`, or returns nil when the line does not start
    /// with an access word (so it may be key=value).
    private static func parseExtentLine(_ line: Substring, at here: String) throws -> Extent? {
        var rest = line
        let accessWord = nextWord(&rest)
        guard accessWords.contains(String(accessWord)) else { return nil }
        let access = DiskExtent.Access(rawValue: String(accessWord)) ?? .readWrite
        let sectorsWord = nextWord(&rest)
        guard let sectors = UInt64(sectorsWord) else {
            throw BlockIOError(.corrupt, "\(here): the sector count \(quoted(sectorsWord)) is not a whole number that fits in 64 bits; the descriptor is damaged")
        }
        guard sectors > 0 else {
            throw BlockIOError(.corrupt, "\(here): an extent of 0 sectors; the descriptor is damaged")
        }
        guard sectors <= UInt64(Int64.max) / sectorSize else {
            throw BlockIOError(.corrupt, "\(here): \(sectors) sectors is more than a file can hold (\(UInt64(Int64.max) / sectorSize) at most); the descriptor is damaged")
        }
        let typeWord = String(nextWord(&rest))
        let kind: Extent.Kind
        switch typeWord {
        case "FLAT": kind = .flat
        case "VMFS": kind = .vmfs
        case _ where sparseExtentTypes.contains(typeWord):
            throw BlockIOError(.invalidArgument, "\(here): a \(typeWord) extent keeps its data in sparse grains; Tessera reads only FLAT and VMFS extents: convert with qemu-img convert -O vmdk -o subformat=monolithicFlat")
        case _ where otherExtentTypes.contains(typeWord):
            throw BlockIOError(.invalidArgument, "\(here): \(typeWord) extents are not supported; Tessera reads only FLAT and VMFS extents")
        default:
            throw BlockIOError(.corrupt, "\(here): unknown extent type \(quoted(typeWord)); expected FLAT or VMFS")
        }
        rest = rest.trimmingWhitespace()
        guard rest.first == "\"", let close = rest.dropFirst().firstIndex(of: "\"") else {
            throw BlockIOError(.corrupt, "\(here): the extent file name must be in double quotes, like RW 2048 FLAT \"disk-flat.vmdk\" 0")
        }
        let fileName = String(rest[rest.index(after: rest.startIndex)..<close])
        guard !fileName.isEmpty else {
            throw BlockIOError(.corrupt, "\(here): the extent file name is empty")
        }
        rest = rest[rest.index(after: close)...].trimmingWhitespace()
        var offsetSectors: UInt64 = 0
        if !rest.isEmpty {
            let offsetWord = nextWord(&rest)
            guard let value = UInt64(offsetWord), rest.trimmingWhitespace().isEmpty else {
                throw BlockIOError(.corrupt, "\(here): the extent's file offset \(quoted(offsetWord)) is not a whole number of sectors that fits in 64 bits")
            }
            guard value <= (UInt64(Int64.max) / sectorSize) - sectors else {
                throw BlockIOError(.corrupt, "\(here): file offset \(value) + \(sectors) sectors runs past the largest possible file; the descriptor is damaged")
            }
            offsetSectors = value
        }
        return Extent(access: access, sectors: sectors, kind: kind, fileName: fileName, offsetSectors: offsetSectors)
    }

    private static func nextWord(_ s: inout Substring) -> Substring {
        s = s.trimmingWhitespace()
        let end = s.firstIndex(where: { $0 == " " || $0 == "\t" }) ?? s.endIndex
        defer { s = s[end...] }
        return s[..<end]
    }

    private static func hex32(_ value: String, key: String, at here: String) throws -> UInt32 {
        guard let v = UInt32(value, radix: 16) else {
            throw BlockIOError(.corrupt, "\(here): \(key)=\(quoted(value)) is not 8 hexadecimal digits; the descriptor is damaged")
        }
        return v
    }

    private static func unquoted(_ s: Substring) -> String {
        if s.count >= 2, s.first == "\"", s.last == "\"" { return String(s.dropFirst().dropLast()) }
        return String(s)
    }

    /// A short, printable rendering of untrusted text for an error message.
    static func quoted(_ s: some StringProtocol) -> String {
        let clipped = s.count > 60 ? String(s.prefix(60)) + "..." : String(s)
        return "\"" + clipped.unicodeScalars.map { $0.isASCII && $0.value >= 0x20 && $0.value < 0x7f ? String($0) : "?" }.joined() + "\""
    }

    // MARK: - Writing

    /// The descriptor as text, in the layout qemu-img writes (which qemu-img and VMware read).
    public func rendered() -> String {
        var out = "# Disk DescriptorFile\nversion=\(version)\n"
        out += "CID=\(hex8(contentID))\nparentCID=\(hex8(parentContentID))\n"
        out += "createType=\"\(subformat.rawValue)\"\n\n# Extent description\n"
        for e in extents {
            out += "\(e.access.rawValue) \(e.sectors) \(e.kind.rawValue) \"\(e.fileName)\""
            // qemu and VMware write no offset after a VMFS extent.
            out += e.kind == .flat ? " \(e.offsetSectors)\n" : "\n"
        }
        out += "\n# The Disk Data Base\n#DDB\n\n"
        for key in diskDatabase.keys.sorted() {
            out += "\(key) = \"\(diskDatabase[key] ?? "")\"\n"
        }
        return out
    }

    private func hex8(_ v: UInt32) -> String {
        let s = String(v, radix: 16)
        return String(repeating: "0", count: 8 - s.count) + s
    }
}

extension Substring {
    func trimmingWhitespace() -> Substring {
        var s = self
        while let c = s.first, c == " " || c == "\t" || c == "\r" { s = s.dropFirst() }
        while let c = s.last, c == " " || c == "\t" || c == "\r" { s = s.dropLast() }
        return s
    }
}
