import BlockIO
import Synchronization
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// An `ObjectStore` over a directory on local disk or NFS.
///
/// Layout: `config`, `packs/xx/<id>.pack`, `index/<id>.idx`, `maps/xx/<id>.page`,
/// `maps/xx/<id>.map`, `snapshots/<id>.snap`, `locks/<id>.lock`,
/// `quarantine/chunks/<chunk ID><pack ID>.aside`, and `quarantine/*.bad` (objects moved aside).
/// Every put goes temp file → write → fsync → rename; directory fsyncs are batched.
public final class LocalObjectStore: ObjectStore {
    public let root: String
    private let faultHook: (@Sendable (FaultPoint) throws -> Void)?
    /// Directories holding names renamed since their last fsync, with the kind they hold.
    private let pendingDirectories = Mutex<[String: ObjectKind]>([:])
    /// Fan-out directories known to exist (saves a mkdir per put).
    private let knownDirectories = Mutex<Set<String>>([])

    public convenience init(root: String) {
        self.init(root: root, faultHook: nil)
    }

    /// A store whose writes stop where a test says: a test hook, so not public.
    /// - Parameter faultHook: called at every named step of a write; a throw there aborts
    ///   the write as a crash or an I/O error would.
    package init(root: String, faultHook: (@Sendable (FaultPoint) throws -> Void)?) {
        self.root = root.count > 1 && root.hasSuffix("/") ? String(root.dropLast()) : root
        self.faultHook = faultHook
    }

    static let topDirectories = ["packs", "index", "maps", "snapshots", "locks", "quarantine"]

    /// Creates the top-level directories (initialize) and makes them durable.
    func createLayout() throws {
        try io("create the repository directories", object: nil) {
            try DurableFile.makeDirectory(root)
            for d in Self.topDirectories { try DurableFile.makeDirectory("\(root)/\(d)") }
            try DurableFile.syncDirectory(root)
        }
    }

    // MARK: - Paths

    private func directory(for key: ObjectKey) -> String {
        switch key.kind {
        case .config: root
        case .pack: "\(root)/packs/\(key.name.prefix(2))"
        case .index: "\(root)/index"
        case .mapPage, .diskMap: "\(root)/maps/\(key.name.prefix(2))"
        case .snapshot: "\(root)/snapshots"
        case .lock: "\(root)/locks"
        case .setAside: "\(root)/quarantine/chunks"
        }
    }

    private static func suffix(_ kind: ObjectKind) -> String {
        switch kind {
        case .config: ""
        case .pack: ".pack"
        case .index: ".idx"
        case .mapPage: ".page"
        case .diskMap: ".map"
        case .snapshot: ".snap"
        case .lock: ".lock"
        case .setAside: ".aside"
        }
    }

    /// The file that holds an object.
    public func path(of key: ObjectKey) -> String {
        key.kind == .config ? "\(root)/config" : "\(directory(for: key))/\(key.name)\(Self.suffix(key.kind))"
    }

    private func validate(_ key: ObjectKey) throws {
        try key.validate()
    }

    private func hook(_ step: FaultStep, _ kind: ObjectKind, _ name: String) throws {
        guard let faultHook else { return }
        let point = FaultPoint(step: step, kind: kind, name: name)
        do { try faultHook(point) } catch let e as RepositoryError { throw e } catch {
            throw RepositoryError(.io, "injected fault at \(point): \(error)", object: "\(kind.noun) \(name)")
        }
    }

    private func io<T>(_ what: String, object: String?, _ body: () throws -> T) throws -> T {
        do { return try body() } catch let e as RepositoryError { throw e } catch let e as BlockIOError {
            let code: RepositoryError.Code = e.code == .notFound ? .notFound : .io
            throw RepositoryError(code, "could not \(what): \(e.message)", object: object, cause: e)
        } catch {
            throw RepositoryError(.io, "could not \(what): \(error)", object: object)
        }
    }

    private func ensureDirectory(_ dir: String, kind: ObjectKind) throws {
        if knownDirectories.withLock({ $0.contains(dir) }) { return }
        if !DurableFile.exists(dir) {
            try DurableFile.makeDirectory(dir)
            // The new fan-out directory's own name lives in its parent: sync that too.
            let parent = DurableFile.parentDirectory(of: dir)
            pendingDirectories.withLock { $0[parent] = kind }
        }
        knownDirectories.withLock { _ = $0.insert(dir) }
    }

    // MARK: - ObjectStore

    public func put(_ key: ObjectKey, _ bytes: [UInt8], syncNow: Bool) throws {
        try validate(key)
        let path = path(of: key)
        try hook(.beforeWrite, key.kind, key.name)
        try io("write \(key)", object: key.description) {
            try ensureDirectory(directory(for: key), kind: key.kind)
            let temp = "\(path).tmp-\(getpid())-\(String(UInt64.random(in: 0...UInt64.max), radix: 16))"
            do {
                let file = try BlockFile(path: temp, mode: .createReadWrite)
                try file.truncate(to: 0)
                try file.write(bytes, at: 0)
                try install(file, from: temp, as: key, syncNow: syncNow)
            } catch {
                unlink(temp)
                throw error
            }
        }
    }

    /// The second half of every write: fsync the temp file, rename it into place, then
    /// sync the directory now or mark it pending. The caller removes `temp` on failure.
    private func install(_ file: BlockFile, from temp: String, as key: ObjectKey, syncNow: Bool) throws {
        let dir = directory(for: key)
        let path = path(of: key)
        try hook(.beforeFileSync, key.kind, key.name)
        try file.sync()
        try hook(.afterFileSync, key.kind, key.name)
        guard rename(temp, path) == 0 else {
            let e = Errno(rawValue: errno)
            throw BlockIOError(.io, "\(path): rename into place failed: \(e)", errno: e)
        }
        try hook(.afterRename, key.kind, key.name)
        if syncNow {
            try hook(.beforeDirectorySync, key.kind, dir)
            try DurableFile.syncDirectory(dir)
            try hook(.afterDirectorySync, key.kind, dir)
        } else {
            pendingDirectories.withLock { $0[dir] = key.kind }
        }
    }

    /// Streams go to a temp file at the top of the kind's tree (the fan-out directory
    /// depends on the name, known only at the end) and are renamed into place.
    public func beginObject(_ kind: ObjectKind) throws -> any ObjectStream {
        let top: String
        switch kind {
        case .pack: top = "\(root)/packs"
        case .mapPage, .diskMap: top = "\(root)/maps"
        default: top = directory(for: ObjectKey(kind, "00"))
        }
        let temp = "\(top)/stream.tmp-\(getpid())-\(String(UInt64.random(in: 0...UInt64.max), radix: 16))"
        let file = try io("start a \(kind.noun)", object: nil) { try BlockFile(path: temp, mode: .createNew) }
        return LocalObjectStream(store: self, kind: kind, file: file, temp: temp)
    }

    /// Ends a stream: the same steps (and fault points) as `put` once the bytes are written.
    fileprivate func finish(_ stream: LocalObjectStream, as name: String) throws {
        let key = ObjectKey(stream.kind, name)
        do {
            try validate(key)
            try hook(.beforeWrite, key.kind, key.name)
            try io("write \(key)", object: key.description) {
                try ensureDirectory(directory(for: key), kind: key.kind)
                try install(stream.file, from: stream.temp, as: key, syncNow: false)
            }
        } catch {
            unlink(stream.temp)
            throw error
        }
    }

    public func syncPendingDirectories() throws {
        let dirs = pendingDirectories.withLock { d -> [String: ObjectKind] in
            let all = d
            d.removeAll()
            return all
        }
        // Children before parents is not needed for correctness (each fsync covers its own
        // entries); sorting only makes the order (and the fault points) deterministic.
        var failed: [String: ObjectKind] = [:]
        var firstError: (any Error)?
        for (dir, kind) in dirs.sorted(by: { $0.key > $1.key }) {
            do {
                try hook(.beforeDirectorySync, kind, dir)
                try io("sync directory \(dir)", object: nil) { try DurableFile.syncDirectory(dir) }
                try hook(.afterDirectorySync, kind, dir)
            } catch {
                failed[dir] = kind
                if firstError == nil { firstError = error }
            }
        }
        if let firstError {
            // Keep the unsynced ones pending so a retry syncs them.
            pendingDirectories.withLock { d in d.merge(failed) { a, _ in a } }
            throw firstError
        }
    }

    public func get(_ key: ObjectKey) throws -> [UInt8] {
        try validate(key)
        return try io("read \(key)", object: key.description) {
            let file = try openExisting(key)
            let size = try file.size()
            return try file.read(count: Int(size), at: 0)
        }
    }

    public func get(_ key: ObjectKey, range: ByteRange) throws -> [UInt8] {
        try validate(key)
        return try io("read \(key)", object: key.description) {
            let file = try openExisting(key)
            let size = try file.size()
            guard range.end <= size else {
                throw RepositoryError.damaged(key.description, "it is \(size) bytes long but bytes \(range) were expected (truncated?)")
            }
            return try file.read(count: Int(range.length), at: range.offset)
        }
    }

    /// Opens an object's file for reading: a regular file, or nothing. A FIFO named like an
    /// object would block a plain open forever and a symbolic link would read bytes from
    /// outside the repository, so both are refused as damage (never waited on, never followed).
    private func openExisting(_ key: ObjectKey) throws -> BlockFile {
        do {
            return try BlockFile.openRegularFile(path: path(of: key))
        } catch let e as BlockIOError where e.code == .notFound {
            throw RepositoryError(.notFound, "\(key) is missing (\(path(of: key))); run `tessera check` to see what it affects",
                                  object: key.description, cause: e)
        } catch let e as BlockIOError where e.code == .notRegularFile {
            throw RepositoryError(.damaged, "\(key) is damaged: \(e.message), so tessera never reads it; move it out of the repository, then run `tessera check`",
                                  object: key.description, cause: e)
        }
    }

    public func size(_ key: ObjectKey) throws -> UInt64 {
        try validate(key)
        return try io("stat \(key)", object: key.description) { try openExisting(key).size() }
    }

    /// True only for a regular file: a FIFO or a symbolic link named like the object is not it.
    public func exists(_ key: ObjectKey) -> Bool {
        guard (try? validate(key)) != nil else { return false }
        var st = stat()
        return lstat(path(of: key), &st) == 0 && st.st_mode & S_IFMT == S_IFREG
    }

    public func list(_ kind: ObjectKind, prefix: String) throws -> [ObjectKey] {
        try scan(kind, prefix: prefix).objects
    }

    public func irregularEntries() throws -> [IrregularEntry] {
        var out: [IrregularEntry] = []
        for kind in ObjectKind.allCases { out += try scan(kind, prefix: "").irregular }
        return out.sorted { $0.path < $1.path }
    }

    /// The entries of one kind's directories named like objects of that kind: the regular
    /// files are the objects; anything else (FIFO, symbolic link, directory, device, socket)
    /// is irregular, reported and never opened. Temp files and other names are neither.
    private func scan(_ kind: ObjectKind, prefix: String) throws -> (objects: [ObjectKey], irregular: [IrregularEntry]) {
        let suffix = Self.suffix(kind)
        var objects: [ObjectKey] = []
        var irregular: [IrregularEntry] = []
        func scanFiles(in dir: String) throws {
            for entry in try entries(of: dir) where entry.name.hasSuffix(suffix) {
                let name = String(entry.name.dropLast(suffix.count))
                guard isHexName(name), name.hasPrefix(prefix) else { continue }
                let path = "\(dir)/\(entry.name)"
                if let what = entry.nonRegularKind(at: path) {
                    irregular.append(IrregularEntry(kind: kind, path: path, what: what))
                } else {
                    objects.append(ObjectKey(kind, name))
                }
            }
        }
        switch kind {
        case .config:
            let path = "\(root)/config"
            if let what = BlockFile.nonRegularKind(atPath: path) {
                irregular.append(IrregularEntry(kind: .config, path: path, what: what))
            } else if DurableFile.exists(path) {
                objects.append(.config)
            }
        case .pack, .mapPage, .diskMap:
            let top = kind == .pack ? "\(root)/packs" : "\(root)/maps"
            for sub in try entries(of: top) where sub.name.utf8.count == 2 && isHexName(sub.name) {
                if prefix.count >= 2 && !prefix.hasPrefix(sub.name) { continue }
                if prefix.count == 1 && !sub.name.hasPrefix(prefix) { continue }
                let dir = "\(top)/\(sub.name)"
                guard sub.isDirectory(at: dir) else {
                    // A fan-out name that is no directory: one report, from the pack scan.
                    if kind != .diskMap {
                        irregular.append(IrregularEntry(kind: kind, path: dir, what: BlockFile.nonRegularKind(atPath: dir) ?? "a file, not a directory"))
                    }
                    continue
                }
                try scanFiles(in: dir)
            }
        case .index, .snapshot, .lock, .setAside:
            try scanFiles(in: directory(for: ObjectKey(kind, "00")))
        }
        return (objects.sorted { $0.name < $1.name }, irregular)
    }

    /// One name in a directory and its type as `readdir` reports it.
    private struct DirectoryEntry {
        var name: String
        var type: UInt8

        /// What the entry is when it is not a regular file; nil for a regular file. File
        /// systems that do not fill in `d_type` are asked with `lstat`.
        func nonRegularKind(at path: String) -> String? {
            if Int(type) == Int(DT_REG) { return nil }
            return BlockFile.nonRegularKind(atPath: path)
        }

        func isDirectory(at path: String) -> Bool {
            if Int(type) == Int(DT_DIR) { return true }
            var st = stat()
            return Int(type) == Int(DT_UNKNOWN) && lstat(path, &st) == 0 && st.st_mode & S_IFMT == S_IFDIR
        }
    }

    /// Names in a directory (a missing directory is empty).
    private func entries(of dir: String) throws -> [DirectoryEntry] {
        guard let d = opendir(dir) else {
            if errno == ENOENT { return [] }
            throw RepositoryError(.io, "could not list \(dir): \(Errno(rawValue: errno)); check permissions")
        }
        defer { closedir(d) }
        var out: [DirectoryEntry] = []
        while let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { raw in
                String(cString: raw.bindMemory(to: CChar.self).baseAddress!)
            }
            if name != "." && name != ".." { out.append(DirectoryEntry(name: name, type: e.pointee.d_type)) }
        }
        return out
    }

    public func delete(_ key: ObjectKey) throws {
        try validate(key)
        let p = path(of: key)
        let dir = directory(for: key)
        if unlink(p) != 0 {
            guard errno == ENOENT else {
                throw RepositoryError(.io, "could not delete \(key) (\(p)): \(Errno(rawValue: errno))", object: key.description)
            }
            // Nothing there is no error (prune re-run after a kill). A killed run's unlink
            // may not be durable yet, so its directory is still synced, when there is one:
            // a fan-out directory of a name never written does not exist.
            guard DurableFile.exists(dir) else { return }
        }
        pendingDirectories.withLock { $0[dir] = key.kind }
    }

    public func quarantine(_ key: ObjectKey) throws -> String {
        try validate(key)
        let from = path(of: key)
        let dir = "\(root)/quarantine"
        return try io("set \(key) aside", object: key.description) {
            try DurableFile.makeDirectory(dir)
            var n = 0
            var to = "\(dir)/\(key.kind.rawValue)-\(key.name).\(n).bad"
            while DurableFile.exists(to) {
                n += 1
                to = "\(dir)/\(key.kind.rawValue)-\(key.name).\(n).bad"
            }
            guard rename(from, to) == 0 else {
                let e = Errno(rawValue: errno)
                throw BlockIOError(e == .noSuchFileOrDirectory ? .notFound : .io, "\(from): move into \(dir) failed: \(e)", errno: e)
            }
            try DurableFile.syncDirectory(dir)
            try DurableFile.syncDirectory(directory(for: key))
            return to
        }
    }

    // MARK: - Leftovers

    /// Temp files (`<name>.tmp-<pid>-<rand>`) left by killed writers, as paths relative to
    /// the root. Lock files are not included: a locker racing prune may be writing one.
    public func leftovers() throws -> [String] {
        var dirs = ["index", "snapshots", "quarantine/chunks", ".", "packs", "maps"]
        for top in ["packs", "maps"] {
            dirs += try entries(of: "\(root)/\(top)")
                .filter { $0.name.utf8.count == 2 && isHexName($0.name) && $0.isDirectory(at: "\(root)/\(top)/\($0.name)") }
                .map { "\(top)/\($0.name)" }
        }
        var out: [String] = []
        for d in dirs {
            for entry in try entries(of: "\(root)/\(d)") where entry.name.contains(".tmp-") {
                out.append(d == "." ? entry.name : "\(d)/\(entry.name)")
            }
        }
        return out.sorted()
    }

    public func removeLeftover(_ name: String) throws {
        guard name.contains(".tmp-"), !name.contains("..") else {
            throw RepositoryError(.invalidArgument, "\(name) is not a leftover temp file")
        }
        let p = "\(root)/\(name)"
        if unlink(p) != 0 && errno != ENOENT {
            throw RepositoryError(.io, "could not delete leftover \(p): \(Errno(rawValue: errno))")
        }
        pendingDirectories.withLock { $0[DurableFile.parentDirectory(of: p)] = .pack }
    }
}

/// A pack (or other object) written in pieces straight to its temp file, so a backup never
/// holds a whole pack in memory.
final class LocalObjectStream: ObjectStream {
    private let store: LocalObjectStore
    let kind: ObjectKind
    let file: BlockFile
    let temp: String
    private let written = Atomic<Int>(0)

    init(store: LocalObjectStore, kind: ObjectKind, file: BlockFile, temp: String) {
        self.store = store
        self.kind = kind
        self.file = file
        self.temp = temp
    }

    var byteCount: Int { written.load(ordering: .relaxed) }

    func append(_ bytes: UnsafeRawBufferPointer) throws {
        let at = written.load(ordering: .relaxed)
        do {
            try file.write(bytes, at: UInt64(at))
        } catch let e as BlockIOError {
            throw RepositoryError(.io, "could not write \(kind.noun) \(temp): \(e.message)", cause: e)
        }
        written.store(at + bytes.count, ordering: .relaxed)
    }

    func finish(as name: String) throws {
        try store.finish(self, as: name)
    }

    func discard() {
        unlink(temp)
    }
}
