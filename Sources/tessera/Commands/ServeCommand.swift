import Agent
import ArgumentParser
import BackupRepository
import Foundation
import Logging
import NBD

/// `tessera serve`: instant restore. A snapshot served read-only over NBD.
struct ServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Serve a snapshot read-only over NBD (instant restore).",
        discussion: """
            Boot a VM from the snapshot, or copy it with qemu-img convert / nbdcopy, without \
            restoring it to a flat file first. Every read is checked against the chunk IDs; a \
            damaged chunk is an I/O error for its bytes. Zero chunks are holes in base:allocation. \
            The repository stays locked (shared) while serving, so prune waits (on a read-only \
            repository, or with --no-lock, it is served without a lock). SIGTERM or \
            SIGINT: finish in-flight requests, release the lock, exit 0.
            """)

    @OptionGroup var repository: RepositoryOptions
    @Argument(help: "A snapshot ID, a unique prefix of one, or `latest` (with --disk).") var snapshot: String?
    @Option(help: "The disk, for `latest`.") var disk: String?
    @Option(help: "Every disk of a consistency group (a VM at one instant), each exported under its disk's name.") var group: String?
    @Option(help: "The NBD Unix socket to listen on (mode 0600; only root and this user may connect).") var socket: String
    @Option(help: ArgumentHelp("Also listen on TCP at HOST:PORT ([::1]:PORT for IPv6).", discussion: """
        NBD over TCP has no authentication and no encryption: whoever connects can read the \
        whole snapshot. Only loopback addresses (127.0.0.0/8, ::1, localhost) are accepted unless \
        --tcp-allow-remote is given; loopback is still open to every local user, while the Unix \
        socket admits only root and the user running the server.
        """)) var tcp: String?
    @Flag(help: ArgumentHelp("Accept a --tcp address other hosts can reach (0.0.0.0, a LAN address).", discussion: """
        Anyone who can reach that address can then read the whole snapshot, with no password and \
        no encryption. Use it only on an isolated network or behind a firewall.
        """)) var tcpAllowRemote = false
    @Option(help: "The export name (default: the snapshot's disk name).") var name: String?
    @OptionGroup var lockOptions: ReadLockOptions

    func validate() throws {
        if let tcp, NBDServer.parseTCPAddress(tcp) == nil {
            throw ValidationError("--tcp takes HOST:PORT, e.g. 127.0.0.1:10809 or [::1]:10809, not '\(tcp)'")
        }
        if tcpAllowRemote && tcp == nil { throw ValidationError("--tcp-allow-remote needs --tcp HOST:PORT") }
        if (snapshot == nil) == (group == nil) { throw ValidationError("give a snapshot, or --group GROUP for every disk of a VM") }
        if group != nil && (disk != nil || name != nil) { throw ValidationError("--group exports each disk under its own name; --disk and --name are for one snapshot") }
    }

    func run() async throws {
        var logger = Logger(label: "tessera.serve")
        logger.logLevel = .info
        let log = CommandLogHandler.logger("tessera.serve", json: false)
        let exports = try reportingErrors {
            if let group {
                return try SnapshotExport.group(repositoryPath: repository.path, group: group, locking: lockOptions.locking, logger: log)
            }
            return [try SnapshotExport(repositoryPath: repository.path, snapshot: snapshot ?? "", disk: disk, exportName: name,
                                       locking: lockOptions.locking, logger: log)]
        }
        // Before the ready line: a SIGTERM sent as soon as it is printed must not be lost.
        let termination = TerminationSignals()
        let server = NBDServer(provider: NBDExportSet(exports), logger: logger)
        var tcpEndpoint: (host: String, port: Int)?
        do {
            try await server.start(unixSocket: socket)
            if let tcp, let (host, port) = NBDServer.parseTCPAddress(tcp) {
                tcpEndpoint = (host, try await server.start(host: host, port: port, allowRemote: tcpAllowRemote))
            }
        } catch {
            try? await server.shutdown()
            for export in exports { export.close() }
            fail("cannot listen: \(error)", code: ExitCodes.failed, json: false)
        }
        for export in exports {
            print("serving snapshot \(export.record.id) of disk \(export.record.diskName) read-only on nbd+unix:///\(export.info.name)?socket=\(socket)")
            if let tcpEndpoint {
                print("serving snapshot \(export.record.id) read-only on \(NBDServer.tcpURI(host: tcpEndpoint.host, port: tcpEndpoint.port, export: export.info.name))")
            }
        }
        fflush(nil)
        await termination.wait()
        try? await server.shutdown()
        for export in exports { export.close() }
        print("stopped cleanly")
    }
}
