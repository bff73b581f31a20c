/// Where an NBD export lives, parsed from the standard NBD URI forms
/// (NetworkBlockDevice/nbd `doc/uri.md`):
/// `nbd+unix:///EXPORT?socket=PATH` and `nbd://HOST[:PORT]/EXPORT` (port 10809 by default).
/// TLS schemes (`nbds://`) are refused.
public struct NBDURI: Sendable, Equatable, CustomStringConvertible {
    public enum Endpoint: Sendable, Equatable {
        case unix(path: String)
        case tcp(host: String, port: Int)
    }

    public var endpoint: Endpoint
    /// The export name; "" is the server's default export.
    public var exportName: String

    public init(endpoint: Endpoint, exportName: String = "") {
        self.endpoint = endpoint
        self.exportName = exportName
    }

    /// - Throws: `NBDError(.badURI)` naming what is wrong with the text.
    public init(parsing text: String) throws {
        func bad(_ why: String) -> NBDError {
            NBDError(.badURI, "\"\(text)\" is not a usable NBD URI: \(why); use nbd+unix:///EXPORT?socket=PATH or nbd://HOST[:PORT]/EXPORT")
        }
        guard let colon = text.firstIndex(of: ":"), text[colon...].hasPrefix("://") else { throw bad("no scheme") }
        let scheme = text[..<colon].lowercased()
        var rest = text[text.index(colon, offsetBy: 3)...]
        var query = ""
        if let q = rest.firstIndex(of: "?") {
            query = String(rest[rest.index(after: q)...])
            rest = rest[..<q]
        }
        if let hash = rest.firstIndex(of: "#") { rest = rest[..<hash] }
        let authority: Substring
        let path: Substring
        if let slash = rest.firstIndex(of: "/") {
            authority = rest[..<slash]
            path = rest[rest.index(after: slash)...]
        } else {
            authority = rest
            path = ""
        }
        guard let name = Self.percentDecode(path) else { throw bad("bad percent-encoding in the export name") }
        var parameters: [String: String] = [:]
        for pair in query.split(separator: "&") where !pair.isEmpty {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard let key = Self.percentDecode(parts[0]),
                  let value = Self.percentDecode(parts.count > 1 ? parts[1] : "") else {
                throw bad("bad percent-encoding in the query")
            }
            parameters[key] = value
        }
        switch scheme {
        case "nbd+unix":
            guard authority.isEmpty else { throw bad("nbd+unix takes no host (write three slashes)") }
            guard let socket = parameters["socket"], !socket.isEmpty else { throw bad("missing ?socket=PATH") }
            self.init(endpoint: .unix(path: socket), exportName: name)
        case "nbd":
            var host = Substring(authority)
            var port = 10809
            if host.hasPrefix("[") {
                guard let close = host.firstIndex(of: "]") else { throw bad("unclosed [ in the IPv6 host") }
                let after = host[host.index(after: close)...]
                if after.hasPrefix(":") {
                    guard let p = Int(after.dropFirst()), (1...65535).contains(p) else { throw bad("bad port") }
                    port = p
                } else if !after.isEmpty {
                    throw bad("junk after the IPv6 host")
                }
                host = host[host.index(after: host.startIndex)..<close]
            } else if let colon = host.lastIndex(of: ":") {
                guard let p = Int(host[host.index(after: colon)...]), (1...65535).contains(p) else { throw bad("bad port") }
                port = p
                host = host[..<colon]
            }
            guard !host.isEmpty else { throw bad("missing host") }
            self.init(endpoint: .tcp(host: String(host), port: port), exportName: name)
        case "nbds", "nbds+unix":
            throw bad("TLS is not supported")
        default:
            throw bad("unknown scheme \"\(scheme)\"")
        }
    }

    public var description: String {
        switch endpoint {
        case .unix(let path): return "nbd+unix:///\(exportName)?socket=\(path)"
        case .tcp(let host, let port):
            let h = host.contains(":") ? "[\(host)]" : host
            return "nbd://\(h):\(port)/\(exportName)"
        }
    }

    private static func percentDecode(_ s: Substring) -> String? {
        var bytes: [UInt8] = []
        var it = Array(s.utf8)[...]
        while let c = it.popFirst() {
            if c == UInt8(ascii: "%") {
                guard it.count >= 2, let v = UInt8(String(decoding: it.prefix(2), as: UTF8.self), radix: 16) else { return nil }
                bytes.append(v)
                it = it.dropFirst(2)
            } else {
                bytes.append(c)
            }
        }
        return String(validating: bytes, as: UTF8.self)
    }
}
