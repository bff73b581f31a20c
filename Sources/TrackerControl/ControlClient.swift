import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A blocking client for the control endpoint, used by `tessera filter ...` and the agent.
public final class ControlClient {
    private var fd: Int32
    private var nextID: UInt32 = 1
    public let path: String

    public init(path: String) throws {
        self.path = path
        fd = try ControlSocket.connect(path: path)
    }

    deinit { close(fd) }

    /// Sends one request and returns its JSON reply; an error reply is thrown as `FilterError`.
    ///
    /// The filter closes a connection that sent nothing for a while (docs/CONTROL.md); a client
    /// kept across a long backup finds its connection closed and connects again before
    /// sending, so a request is never lost, nor sent twice.
    public func send(_ request: ControlProtocol.Request, payload: [UInt8]) throws -> [UInt8] {
        if ControlSocket.closedByPeer(fd) {
            close(fd)
            fd = -1
            fd = try ControlSocket.connect(path: path)
        }
        let id = nextID
        nextID &+= 1
        let header = ControlProtocol.Header(magic: ControlProtocol.requestMagic, number: request.rawValue,
                                            id: id, length: UInt32(payload.count))
        do {
            try ControlSocket.writeAll(fd, header.bytes + payload)
        } catch {
            // A filter that refused the connection (it serves too many) answered and closed at
            // once: its answer says why, and is worth more than "broken pipe".
            guard let refusal = try? readReply() else { throw error }
            return try check(refusal)
        }
        return try check(try readReply())
    }

    private func readReply() throws -> (header: ControlProtocol.Header, body: [UInt8]) {
        guard let replyHeaderBytes = try ControlSocket.readExactly(fd, ControlProtocol.headerSize) else {
            throw FilterError(.unreachable, "the filter at \(path) closed the connection without replying")
        }
        let reply = try ControlProtocol.Header(parsing: replyHeaderBytes)
        guard reply.magic == ControlProtocol.responseMagic, reply.length <= ControlProtocol.maxResponsePayload else {
            throw FilterError(.badRequest, "\(path) did not answer in the Tessera control protocol; is it a control socket?")
        }
        return (reply, try ControlSocket.readExactly(fd, Int(reply.length)) ?? [])
    }

    private func check(_ reply: (header: ControlProtocol.Header, body: [UInt8])) throws -> [UInt8] {
        if reply.header.number != 0 {
            let err = try? JSONDecoder().decode(ControlProtocol.ErrorReply.self, from: Data(reply.body))
            throw FilterError(ControlProtocol.code(forStatus: reply.header.number), err?.error ?? "request failed with status \(reply.header.number)")
        }
        return reply.body
    }

    func call<Reply: Decodable>(_ request: ControlProtocol.Request, _ payload: some Encodable, as: Reply.Type) throws -> Reply {
        let body = try send(request, payload: ControlProtocol.encode(payload))
        return try ControlProtocol.decode(Reply.self, body, request: request)
    }

    // MARK: - The requests

    public func status(disk: String? = nil) throws -> [DiskStatus] {
        try call(.status, ControlProtocol.StatusRequest(disk: disk), as: ControlProtocol.StatusReply.self).disks
    }

    public func attach(disk: String, path: String) throws -> DiskStatus {
        try call(.attach, ControlProtocol.AttachRequest(disk: disk, path: path), as: DiskStatus.self)
    }

    public func detach(disk: String) throws {
        _ = try call(.detach, ControlProtocol.DiskRequest(disk: disk), as: ControlProtocol.Empty.self)
    }

    public func checkpoint(disk: String, owner: CheckpointOwner? = .current) throws -> ControlProtocol.CheckpointReply {
        try call(.checkpoint, ControlProtocol.CheckpointRequest(disk: disk, owner: owner), as: ControlProtocol.CheckpointReply.self)
    }

    /// Checkpoints several disks at one instant (see docs/CONTROL.md, CHECKPOINT_GROUP).
    public func checkpointGroup(disks: [String], owner: CheckpointOwner? = .current, group: String? = nil) throws -> ControlProtocol.CheckpointGroupReply {
        try call(.checkpointGroup, ControlProtocol.CheckpointGroupRequest(disks: disks, owner: owner, group: group),
                 as: ControlProtocol.CheckpointGroupReply.self)
    }

    /// One page of changes.
    public func queryChanges(disk: String, since: String, offset: UInt64? = nil, length: UInt64? = nil) throws -> ControlProtocol.QueryChangesReply {
        try call(.queryChanges, ControlProtocol.QueryChangesRequest(disk: disk, since: since, offset: offset, length: length),
                 as: ControlProtocol.QueryChangesReply.self)
    }

    /// Every changed extent since `since`, following the pages to the end of the disk.
    public func allChanges(disk: String, since: String) throws -> [ControlProtocol.Extent] {
        var out: [ControlProtocol.Extent] = []
        var offset: UInt64 = 0
        while true {
            let page = try queryChanges(disk: disk, since: since, offset: offset)
            out += page.extents
            let next = page.processedOffset + page.processedLength
            guard page.processedLength > 0 else {
                throw FilterError(.io, "the filter answered a change query with an empty page at offset \(offset)")
            }
            if next >= page.size { break }
            offset = next
        }
        return out
    }

    public func release(disk: String, commit: Bool) throws -> DiskStatus {
        try call(.release, ControlProtocol.ReleaseRequest(disk: disk, commit: commit), as: DiskStatus.self)
    }

    public func reset(disk: String, reason: String?) throws -> DiskStatus {
        try call(.reset, ControlProtocol.ResetRequest(disk: disk, reason: reason), as: DiskStatus.self)
    }
}
