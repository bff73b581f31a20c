import NIOCore
import TrackerControl

/// Entry point for the fuzz targets (Tools/fuzz-targets, built only with TESSERA_FUZZ=1) and
/// the regression replay test: a control connection's bytes as the filter reads them (framing,
/// then each request's JSON payload), and the same payloads read as the replies a client
/// decodes. `package`, not public.
package enum ControlFuzzing {
    package static func connection(_ bytes: [UInt8]) {
        var parser = ControlFrameParser()
        var buffer = ByteBuffer(bytes: bytes)
        var frames: [ControlFrame] = []
        while let frame = parser.next(&buffer) { frames.append(frame) }
        if let last = parser.end(&buffer) { frames.append(last) }
        for case .message(let header, let payload) in frames {
            guard let request = ControlProtocol.Request(rawValue: header.number) else { continue }
            typealias P = ControlProtocol
            switch request {
            case .attach: _ = try? P.decode(P.AttachRequest.self, payload, request: request)
            case .detach: _ = try? P.decode(P.DiskRequest.self, payload, request: request)
            case .status: _ = try? P.decode(P.StatusRequest.self, payload, request: request)
            case .checkpoint: _ = try? P.decode(P.CheckpointRequest.self, payload, request: request)
            case .queryChanges: _ = try? P.decode(P.QueryChangesRequest.self, payload, request: request)
            case .release: _ = try? P.decode(P.ReleaseRequest.self, payload, request: request)
            case .reset: _ = try? P.decode(P.ResetRequest.self, payload, request: request)
            case .checkpointGroup: _ = try? P.decode(P.CheckpointGroupRequest.self, payload, request: request)
            }
            // The client's side: the same bytes as a reply.
            _ = try? P.decode(P.StatusReply.self, payload, request: request)
            _ = try? P.decode(P.CheckpointReply.self, payload, request: request)
            _ = try? P.decode(P.QueryChangesReply.self, payload, request: request)
            _ = try? P.decode(P.CheckpointGroupReply.self, payload, request: request)
            _ = try? P.decode(P.ErrorReply.self, payload, request: request)
        }
        _ = try? ControlProtocol.Header(parsing: Array(bytes.prefix(16)))
    }
}
