@testable import NBD
import Testing

struct NBDURITests {
    @Test(arguments: [
        ("nbd+unix:///disk?socket=/tmp/x.sock", NBDURI(endpoint: .unix(path: "/tmp/x.sock"), exportName: "disk")),
        ("nbd+unix://?socket=/run/a%20b.sock", NBDURI(endpoint: .unix(path: "/run/a b.sock"), exportName: "")),
        ("nbd+unix:///?socket=s.sock", NBDURI(endpoint: .unix(path: "s.sock"), exportName: "")),
        ("nbd://127.0.0.1/export", NBDURI(endpoint: .tcp(host: "127.0.0.1", port: 10809), exportName: "export")),
        ("nbd://localhost:10810/", NBDURI(endpoint: .tcp(host: "localhost", port: 10810), exportName: "")),
        ("nbd://[::1]:9000/a%2Fb", NBDURI(endpoint: .tcp(host: "::1", port: 9000), exportName: "a/b")),
        ("NBD://host", NBDURI(endpoint: .tcp(host: "host", port: 10809), exportName: "")),
    ])
    func parsesValidURIs(text: String, expected: NBDURI) throws {
        #expect(try NBDURI(parsing: text) == expected)
    }

    @Test(arguments: ["", "disk.raw", "nbd+unix:///disk", "nbd+unix://host/disk?socket=/s", "nbd://", "nbd://host:0/",
                      "nbd://host:99999/", "nbd://host:x/", "nbds://host/", "http://host/", "nbd://[::1/", "nbd://h/%zz",
                      "nbd+unix:///d?socket="])
    func rejectsBadURIs(text: String) {
        #expect(throws: NBDError.self) { try NBDURI(parsing: text) }
    }

    @Test func descriptionRoundTrips() throws {
        for text in ["nbd+unix:///disk?socket=/tmp/x.sock", "nbd://127.0.0.1:10809/e", "nbd://[::1]:9/e"] {
            let u = try NBDURI(parsing: text)
            #expect(try NBDURI(parsing: u.description) == u)
        }
    }
}
