import Codecs
import Foundation

/// The control endpoint's wire format, version 1 (documented in docs/CONTROL.md).
///
/// Modelled on a character device driven by ioctls: a fixed header carrying a numbered
/// request, then a JSON payload. All integers little-endian.
///
///     request:  magic "TSCQ" u32 | version u16 | request u16 | id u32 | length u32 | JSON
///     response: magic "TSCR" u32 | version u16 | status  u16 | id u32 | length u32 | JSON
public enum ControlProtocol {
    public static let requestMagic: UInt32 = 0x5453_4351 // "TSCQ"
    public static let responseMagic: UInt32 = 0x5453_4352 // "TSCR"
    public static let version: UInt16 = 1
    public static let headerSize = 16
    /// Requests are small; anything bigger is garbage, refused before reading it.
    public static let maxRequestPayload = 64 * 1024
    public static let maxResponsePayload = 64 * 1024 * 1024

    /// The numbered requests (the "ioctl numbers").
    public enum Request: UInt16, Sendable, CaseIterable {
        case attach = 1
        case detach = 2
        case status = 3
        case checkpoint = 4
        case queryChanges = 5
        case release = 6
        case reset = 7
        /// CHECKPOINT of several disks at one instant (a VM's consistency group).
        case checkpointGroup = 8
    }

    /// Response status numbers: 0 is success, the rest name a `FilterError.Code`.
    public static func statusNumber(_ code: FilterError.Code?) -> UInt16 {
        guard let code else { return 0 }
        switch code {
        case .badRequest: return 1
        case .unknownRequest: return 2
        case .unsupportedVersion: return 3
        case .unknownDisk: return 4
        case .diskExists: return 5
        case .checkpointOpen: return 6
        case .noCheckpoint: return 7
        case .fullReadRequired: return 8
        case .invalidArgument: return 9
        case .damaged: return 10
        case .io: return 11
        case .busy: return 12
        case .unreachable: return 13
        case .notFound: return 14
        case .permission: return 15
        }
    }

    /// The code of a status number; a number this client does not know reads as `io`.
    public static func code(forStatus status: UInt16) -> FilterError.Code {
        for code in [FilterError.Code.badRequest, .unknownRequest, .unsupportedVersion, .unknownDisk, .diskExists,
                     .checkpointOpen, .noCheckpoint, .fullReadRequired, .invalidArgument, .damaged, .io, .busy, .unreachable,
                     .notFound, .permission]
        where statusNumber(code) == status {
            return code
        }
        return .io
    }

    public struct Header: Equatable, Sendable {
        public var magic: UInt32
        public var version: UInt16
        public var number: UInt16 // request code or status
        public var id: UInt32
        public var length: UInt32

        public init(magic: UInt32, version: UInt16 = ControlProtocol.version, number: UInt16, id: UInt32, length: UInt32) {
            self.magic = magic
            self.version = version
            self.number = number
            self.id = id
            self.length = length
        }

        public var bytes: [UInt8] {
            var w = ByteWriter()
            w.u32(magic); w.u16(version); w.u16(number); w.u32(id); w.u32(length)
            return w.bytes
        }

        /// Parses a 16-byte header.
        /// - Throws: `FilterError.badRequest` when fewer than 16 bytes are given.
        public init(parsing bytes: [UInt8]) throws {
            var r = ByteReader(bytes)
            do {
                magic = try r.u32(); version = try r.u16(); number = try r.u16(); id = try r.u32(); length = try r.u32()
            } catch {
                throw FilterError(.badRequest, "a control message header is 16 bytes; got \(bytes.count)")
            }
        }
    }

    // MARK: - Payloads

    public struct DiskRequest: Codable, Sendable {
        public var disk: String
        public init(disk: String) { self.disk = disk }
    }

    public struct CheckpointRequest: Codable, Sendable {
        public var disk: String
        /// Who takes the checkpoint, so a checkpoint left by a process that died can be
        /// recognised as stale (same host, pid gone). Optional.
        public var owner: CheckpointOwner?
        public init(disk: String, owner: CheckpointOwner?) { self.disk = disk; self.owner = owner }
    }

    public struct CheckpointGroupRequest: Codable, Sendable {
        public var disks: [String]
        public var owner: CheckpointOwner?
        /// A name for the group (default: a new UUID), recorded with each disk's checkpoint.
        public var group: String?
        public init(disks: [String], owner: CheckpointOwner?, group: String? = nil) {
            self.disks = disks; self.owner = owner; self.group = group
        }
    }

    public struct CheckpointGroupReply: Codable, Sendable {
        public var group: String
        /// One per disk, in the order asked.
        public var checkpoints: [CheckpointReply]
        public init(group: String, checkpoints: [CheckpointReply]) { self.group = group; self.checkpoints = checkpoints }
    }

    public struct AttachRequest: Codable, Sendable {
        public var disk: String
        public var path: String
        public init(disk: String, path: String) { self.disk = disk; self.path = path }
    }

    public struct StatusRequest: Codable, Sendable {
        public var disk: String?
        public init(disk: String?) { self.disk = disk }
    }

    public struct StatusReply: Codable, Sendable {
        public var protocolVersion: Int
        public var disks: [DiskStatus]
        public init(protocolVersion: Int, disks: [DiskStatus]) { self.protocolVersion = protocolVersion; self.disks = disks }
    }

    public struct CheckpointReply: Codable, Sendable {
        public var disk: String
        public var changeID: String
        public var previous: String?
        public var createdAt: Double
        /// The frozen flat file(s) to read: the base stays still until RELEASE.
        public var path: String
        public var files: [String]
        public var size: UInt64
        public var granularity: UInt64
        /// The consistency group, when the checkpoint was taken with other disks.
        public var group: String?

        public init(disk: String, changeID: String, previous: String?, createdAt: Double, path: String, files: [String],
                    size: UInt64, granularity: UInt64, group: String? = nil) {
            self.disk = disk; self.changeID = changeID; self.previous = previous; self.createdAt = createdAt
            self.path = path; self.files = files; self.size = size; self.granularity = granularity; self.group = group
        }
    }

    public struct QueryChangesRequest: Codable, Sendable {
        public var disk: String
        public var since: String
        public var offset: UInt64?
        public var length: UInt64?
        public init(disk: String, since: String, offset: UInt64? = nil, length: UInt64? = nil) {
            self.disk = disk; self.since = since; self.offset = offset; self.length = length
        }
    }

    public struct Extent: Codable, Sendable, Equatable {
        public var offset: UInt64
        public var length: UInt64
        /// The range was last trimmed or zeroed: it reads as zeroes, no need to read it.
        public var zero: Bool
        public init(offset: UInt64, length: UInt64, zero: Bool) { self.offset = offset; self.length = length; self.zero = zero }
    }

    public struct QueryChangesReply: Codable, Sendable {
        public var disk: String
        public var since: String
        public var extents: [Extent]
        /// The part of the disk this page covers; ask again from its end for the rest.
        public var processedOffset: UInt64
        public var processedLength: UInt64
        public var size: UInt64

        public init(disk: String, since: String, extents: [Extent], processedOffset: UInt64, processedLength: UInt64, size: UInt64) {
            self.disk = disk; self.since = since; self.extents = extents
            self.processedOffset = processedOffset; self.processedLength = processedLength; self.size = size
        }
    }

    public struct ReleaseRequest: Codable, Sendable {
        public var disk: String
        public var commit: Bool
        public init(disk: String, commit: Bool) { self.disk = disk; self.commit = commit }
    }

    public struct ResetRequest: Codable, Sendable {
        public var disk: String
        public var reason: String?
        public init(disk: String, reason: String?) { self.disk = disk; self.reason = reason }
    }

    public struct ErrorReply: Codable, Sendable {
        public var error: String
        public var code: String
        public init(error: String, code: String) { self.error = error; self.code = code }
    }

    public struct Empty: Codable, Sendable {
        public init() {}
    }

    package static func encode(_ value: some Encodable) -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return Array((try? encoder.encode(value)) ?? Data("{}".utf8))
    }

    package static func decode<T: Decodable>(_ type: T.Type, _ bytes: [UInt8], request: Request) throws -> T {
        do {
            return try JSONDecoder().decode(T.self, from: Data(bytes))
        } catch {
            throw FilterError(.badRequest, "the \(request) request's payload is not valid JSON of the expected shape (\(error)); see docs/CONTROL.md", cause: error)
        }
    }
}
