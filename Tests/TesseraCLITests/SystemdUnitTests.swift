import Foundation
import Testing
import TestSupport

/// The units in Tools/systemd are what the README tells people to install: systemd must
/// accept them without a single warning (an unknown key is only a warning, and the setting
/// silently does nothing), with this build's binary in ExecStart.
struct SystemdUnitTests {
    @Test func theUnitsVerifyCleanly() throws {
        let dir = try TemporaryDirectory("units")
        let source = BuiltProducts.fixtures.replacingOccurrences(of: "/Fixtures", with: "/Tools/systemd")
        var units: [String] = []
        for name in ["tessera-filter.service", "tessera-run.service", "tessera-run.timer"] {
            let text = try String(contentsOfFile: "\(source)/\(name)", encoding: .utf8)
            #expect(name.hasSuffix(".timer") || text.contains("ExecStart=/usr/local/bin/tessera "), "\(name) runs the installed binary")
            try text.replacingOccurrences(of: "/usr/local/bin/tessera", with: Tessera.binary)
                .write(toFile: dir.file(name), atomically: true, encoding: .utf8)
            units.append(dir.file(name))
        }
        let r = try runCommand("systemd-analyze", ["verify"] + units)
        let complaints = (r.stdout + r.stderr).split(separator: "\n").filter { $0.contains(dir.path) }
        #expect(r.status == 0 && complaints.isEmpty, "\(r.stdout)\(r.stderr)")
        let timer = try String(contentsOfFile: "\(source)/tessera-run.timer", encoding: .utf8)
        #expect(timer.contains("Persistent=true") && timer.contains("RandomizedDelaySec="))
    }
}
