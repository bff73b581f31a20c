import BlockIO
import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Where a restore writes, and how the result takes the target's place.
///
/// A new target, or one replaced with `force`, is written into a staging folder next to it
/// (`.tessera-restore-XXXXXX`, same file system) and renamed into place only when every byte
/// is written and synced: a restore that fails, is cancelled or is killed leaves the old
/// target exactly as it was and never a partial disk under the final name (a kill leaves the
/// staging folder, which the next restore into that folder removes). `update` (only the
/// chunks that differ) writes in place, as its name says: an interrupted update leaves the
/// target part old, part new, and running it again finishes it.
///
/// The target is held (`flock`) for the whole restore, and a target that a filter holds — the
/// disk of a running VM — is refused: writing behind the filter's back would make its next
/// incremental back up something other than the disk.
public final class RestoreTarget: Sendable {
    public enum Mode: Sendable {
        /// The target must not exist, or be empty.
        case create
        /// An existing target is replaced whole, at the end.
        case replace
        /// An existing disk of the right size is updated in place.
        case update
    }

    public let path: String
    public let format: RestoreFormat
    public let mode: Mode
    /// The disk being written (in the staging folder, or the target itself for `update`).
    public let image: DiskImage
    /// Notes for the operator (a stale staging folder removed...).
    public let notes: [String]
    private let staging: String?
    /// The target's locks, and the staging folder's (held while this restore lives).
    private let locks: [FileLock]
    private let finished = Atomic<Bool>(false)

    static let stagingPrefix = ".tessera-restore-"

    private init(path: String, format: RestoreFormat, mode: Mode, image: DiskImage, staging: String?,
                 locks: [FileLock], notes: [String]) {
        self.path = path
        self.format = format
        self.mode = mode
        self.image = image
        self.staging = staging
        self.locks = locks
        self.notes = notes
    }

    deinit { if !finished.load(ordering: .relaxed) { discard() } }

    /// Checks the target, takes its locks and makes the disk to write.
    /// - Throws: `AgentError.target` saying what is wrong and what to give instead.
    public static func prepare(path: String, format: RestoreFormat, size: UInt64, mode: Mode) throws -> RestoreTarget {
        var isDirectory: ObjCBool = false
        let exists = FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory)
        if isDirectory.boolValue || path.hasSuffix("/") {
            throw AgentError(.target, "\(path) is a directory; give the file to restore into, e.g. \(path.hasSuffix("/") ? path : path + "/")disk.\(format == .vmdk ? "vmdk" : "raw")")
        }
        let folder = DurableFile.parentDirectory(of: path)
        var folderIsDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: folder, isDirectory: &folderIsDirectory), folderIsDirectory.boolValue else {
            throw AgentError(.target, "the folder \(folder) does not exist; create it, or restore somewhere else")
        }
        let locks = try exists ? hold(path, format: format) : []
        do {
            switch mode {
            case .update:
                guard exists else {
                    throw AgentError(.target, "updating only the chunks that differ needs an existing disk, but \(path) does not exist; restore it whole instead")
                }
                let image = try DiskImage.open(path: path, writable: true)
                guard image.size == size else {
                    throw AgentError(.target, "\(path) is \(image.size) bytes but the snapshot is \(size) bytes; replace it whole instead of updating it")
                }
                return RestoreTarget(path: path, format: format, mode: mode, image: image, staging: nil, locks: locks, notes: [])
            case .create, .replace:
                if try exists && mode == .create && BlockFile(path: path, mode: .readOnly).size() > 0 {
                    throw AgentError(.targetExists, "\(path) exists and is not empty; replace it whole, or update it in place (only the chunks that differ)")
                }
                let directory = DurableFile.parentDirectory(of: path)
                let notes = removeStaleStaging(in: directory)
                let (staging, stagingLock) = try makeStaging(in: directory)
                do {
                    let image = switch format {
                    case .raw: try DiskImage.createRaw(path: "\(staging)/\(fileName(path))", size: size)
                    case .vmdk: try DiskImage.createVMDK(descriptorPath: "\(staging)/\(fileName(path))", size: size)
                    }
                    return RestoreTarget(path: path, format: format, mode: mode, image: image, staging: staging,
                                         locks: locks + [stagingLock], notes: notes)
                } catch {
                    removeTree(staging)
                    throw error
                }
            }
        } catch let e as BlockIOError {
            throw AgentError(.target, "cannot prepare the restore target: \(e.message)", cause: e)
        }
    }

    /// Makes the restored disk durable and puts it in the target's place: extents first, the
    /// descriptor (or raw file) last, each with one rename, then the folder synced.
    public func commit() throws {
        do {
            try image.sync()
            if let staging {
                let directory = DurableFile.parentDirectory(of: path)
                let name = Self.fileName(path)
                // The raw file or the descriptor goes last: a descriptor never names an
                // extent that is not in place yet.
                let extents = Set(image.extents.map { Self.fileName($0.path) }).subtracting([name])
                for file in extents.sorted() + [name] {
                    guard rename("\(staging)/\(file)", "\(directory)/\(file)") == 0 else {
                        throw BlockIOError.fromErrno("move the restored disk into place", path: "\(directory)/\(file)")
                    }
                }
                try DurableFile.syncDirectory(directory)
                Self.removeTree(staging)
            }
            finished.store(true, ordering: .relaxed)
        } catch let e as BlockIOError {
            throw AgentError(.target, "making the restored disk durable and putting it in place failed: \(e.message); the old target is unchanged", cause: e)
        }
    }

    /// Throws the staged disk away (a failed or cancelled restore); the target stays as it was.
    public func discard() {
        finished.store(true, ordering: .relaxed)
        if let staging { Self.removeTree(staging) }
    }

    // MARK: - Locks

    /// Locks the target and, for a VMDK, its extents; refuses a file someone else holds.
    private static func hold(_ path: String, format: RestoreFormat) throws -> [FileLock] {
        var files = [path]
        if let image = try? DiskImage.open(path: path, writable: false) {
            files += image.extents.map(\.path)
        }
        var locks: [FileLock] = []
        for file in Array(Set(files)).sorted() {
            do {
                locks.append(try FileLock.acquire(file))
            } catch let held as FileLock.Held {
                throw AgentError(.target, "\(file) is held by \(held.pid.map { "process \($0)" } ?? "another process"): a filter serves it (`tessera filter serve`), or another restore writes it. Writing behind a filter's back would make its next backup save something else than the disk: restore into another file, or stop the filter (or detach the disk) first")
            }
        }
        return locks
    }

    // MARK: - Staging

    private static func makeStaging(in directory: String) throws -> (String, FileLock) {
        var template = Array("\(directory)/\(stagingPrefix)XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else {
            throw BlockIOError.fromErrno("create a staging folder", path: directory)
        }
        let staging = String(cString: made)
        do {
            // Held while this restore runs, so another restore can tell a live staging folder
            // from one a killed restore left.
            return (staging, try FileLock.acquire("\(staging)/\(lockName)", create: true, writePid: true))
        } catch {
            removeTree(staging)
            throw error
        }
    }

    /// Staging folders whose restore is gone (killed): their lock is free.
    private static func removeStaleStaging(in directory: String) -> [String] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        var notes: [String] = []
        for entry in entries where entry.hasPrefix(stagingPrefix) {
            let folder = "\(directory)/\(entry)"
            guard (try? FileLock.holder(ifLocked: "\(folder)/\(lockName)")) == .some(nil) else { continue }
            removeTree(folder)
            notes.append("removed \(folder), left by a restore that was killed")
        }
        return notes
    }

    private static let lockName = "lock"

    private static func removeTree(_ path: String) { try? FileManager.default.removeItem(atPath: path) }

    private static func fileName(_ path: String) -> String { String(path.split(separator: "/").last ?? Substring(path)) }
}
