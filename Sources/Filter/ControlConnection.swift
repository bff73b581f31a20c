import TrackerControl

/// What one control connection does next, as a pure state machine: the handler
/// (`ControlConnectionHandler`) feeds it messages and events and carries out its actions.
///
/// Requests of one connection run one at a time, in the order they arrived, so replies go
/// back in order and a STATUS sent after a CHECKPOINT sees the checkpoint. Messages that
/// arrive meanwhile (a pipelining client) wait in `queue`; while it holds `maximumQueued`,
/// the connection stops reading. An unknown request number and a malformed message are
/// answered in their turn too, never ahead of an earlier request.
struct ControlConnection {
    enum Action: Equatable {
        /// Run the request (on a thread pool) and call `finished()` when its reply is written.
        case run(ControlProtocol.Request, id: UInt32, payload: [UInt8])
        /// Write this reply; the connection goes on.
        case reply([UInt8])
        /// Write this reply, then close.
        case replyAndClose([UInt8])
        case close
    }

    /// Messages waiting while this many are queued stop the reading.
    static let maximumQueued = 16

    private enum Entry {
        case request(ControlProtocol.Header, payload: [UInt8])
        /// Answer with this error and go on.
        case refuse(id: UInt32, FilterError)
        /// Answer with this error and close.
        case fail(id: UInt32, FilterError)
    }

    private var queue: [Entry] = []
    private var queueHead = 0
    /// A request is running: nothing else starts until it is finished.
    private(set) var running = false
    /// The peer closed its sending side: close once every queued request is answered.
    private var inputClosed = false
    /// No more messages are taken (after a malformed one, or when the server shuts down).
    private var closing = false
    private var closed = false

    private var queued: Int { queue.count - queueHead }

    /// Nothing running and nothing queued.
    var isIdle: Bool { !running && queued == 0 }

    /// Whether the handler should read more bytes.
    var wantsInput: Bool { !closing && !inputClosed && !closed && queued < Self.maximumQueued }

    mutating func received(_ frame: ControlFrame) {
        guard !closing, !closed else { return }
        switch frame {
        case .message(let header, let payload):
            queue.append(.request(header, payload: payload))
        case .malformed(let id, let error):
            queue.append(.fail(id: id, error))
            closing = true
        }
    }

    mutating func endOfInput() { inputClosed = true }

    /// The server is shutting down: the running request finishes and is answered, the queued
    /// ones are answered `busy` without running, then the connection closes.
    mutating func drain() {
        closing = true
        for i in queueHead..<queue.count {
            if case .request(let header, _) = queue[i] {
                queue[i] = .refuse(id: header.id, FilterError(.busy, "the filter is shutting down; this request was not run: send it again when the filter is back"))
            }
        }
    }

    /// The running request's reply was handed to the channel.
    mutating func finished() {
        precondition(running, "finished() without a running request")
        running = false
    }

    /// The next thing to do, or nil to wait (for a request to finish, for more input, or for
    /// `writable`: a client not reading its replies gets no new request started).
    mutating func next(writable: Bool) -> Action? {
        guard !closed, !running else { return nil }
        guard queued > 0 else {
            guard inputClosed || closing else { return nil }
            closed = true
            return .close
        }
        guard writable else { return nil }
        let entry = queue[queueHead]
        queueHead += 1
        if queueHead == queue.count {
            queue.removeAll(keepingCapacity: true)
            queueHead = 0
        }
        switch entry {
        case .request(let header, let payload):
            guard let request = ControlProtocol.Request(rawValue: header.number) else {
                // The payload was consumed, so the stream is still in step: the connection stays.
                return .reply(ControlReply.error(id: header.id, FilterError(.unknownRequest, "unknown request number \(header.number); known: 1 ATTACH, 2 DETACH, 3 STATUS, 4 CHECKPOINT, 5 QUERY_CHANGES, 6 RELEASE, 7 RESET, 8 CHECKPOINT_GROUP")))
            }
            running = true
            return .run(request, id: header.id, payload: payload)
        case .refuse(let id, let error):
            return .reply(ControlReply.error(id: id, error))
        case .fail(let id, let error):
            closed = true
            queue.removeAll()
            queueHead = 0
            return .replyAndClose(ControlReply.error(id: id, error))
        }
    }
}
