import ArgumentParser
import ChangeTracking
import Dispatch
import Filter
import Foundation
import Logging
import NBD
import Nightly

struct FilterServe: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Serve disks over NBD, marking every write before it is acknowledged.",
        discussion: """
            Each --disk NAME=PATH (a raw flat file or a VMDK descriptor with flat extents) is \
            exported as NAME (live, writable) and, while a checkpoint is open, NAME@checkpoint \
            (read-only, the disk at the checkpoint). Drive it with `tessera filter status|checkpoint|\
            changes|release|reset` on the --control socket. SIGTERM or SIGINT: finish in-flight \
            requests, flush, persist the tracking state, exit 0.
            With --config FILE (the nightly run's config), the sockets, the state directory and \
            every disk whose changes come from the filter are taken from the file, so a restarted \
            filter serves the same disks as before.
            """)

    @Option(help: "The nightly run's config: serve its [filter] with every disk tracked by the filter.") var config: String?
    @Option(name: .customLong("disk"), help: "NAME=PATH of a disk to serve (repeatable).")
    var disks: [String] = []
    @Option(help: "The NBD Unix socket to listen on (mode 0600; only root and this user may connect).") var socket: String?
    @Option(help: "The control endpoint's Unix socket (mode 0600; only root and this user may connect).") var control: String?
    @Option(help: "Where tracking state, activity logs and overlays live.") var stateDir: String?
    @Option(help: "Tracking granularity: a power of two from 4K to 16M (default 64K).") var granularity: ByteCount?
    @Option(help: ArgumentHelp("Also listen on TCP at HOST:PORT ([::1]:PORT for IPv6).", discussion: """
        NBD over TCP has no authentication and no encryption: whoever connects can read and \
        overwrite every served disk. Only loopback addresses (127.0.0.0/8, ::1, localhost) are \
        accepted unless --tcp-allow-remote is given; loopback is still open to every local user, \
        while the Unix socket admits only root and the user running the filter.
        """)) var tcp: String?
    @Flag(help: ArgumentHelp("Accept a --tcp address other hosts can reach (0.0.0.0, a LAN address).", discussion: """
        Anyone who can reach that address can then read and overwrite every served disk, with \
        no password and no encryption. Use it only on an isolated network or behind a firewall.
        """)) var tcpAllowRemote = false
    @Option(help: ArgumentHelp("Memory for WRITE payloads, shared by all NBD connections (at least 32M).", discussion: """
        A WRITE reserves its length from this budget when its header arrives and returns it once \
        written; a connection that would go over waits, without reading, in arrival order.
        """)) var payloadBudget: ByteCount = ByteCount(bytes: UInt64(NBDServer.defaultPayloadBudget))
    @Option(help: ArgumentHelp("Seconds a connection may hold budget for an incomplete WRITE while others wait.", discussion: """
        Then it is closed, so a client that never sends the rest of a WRITE cannot block the others.
        """)) var payloadStallTimeout: Int = 30
    @Option(help: "Activity log extent size (a power of two, at least the granularity).") var activityLogExtent: ByteCount = ByteCount(bytes: 4 << 20)
    @Option(help: "Activity log slots.") var activityLogSlots: Int = 1024
    @Option(help: "Seconds between periodic writes of the tracking state.") var persistInterval: Int = 30
    @Option(help: ArgumentHelp("Seconds a control connection may send nothing before it is closed.", discussion: """
        Only while none of its requests runs; `tessera` clients reconnect by themselves.
        """)) var controlIdleTimeout: Int = Int(ControlServer.defaultIdleTimeout.components.seconds)

    func validate() throws {
        if config != nil {
            let given = [("--disk", !disks.isEmpty), ("--socket", socket != nil), ("--control", control != nil),
                         ("--state-dir", stateDir != nil), ("--tcp", tcp != nil), ("--granularity", granularity != nil)]
            if let (flag, _) = given.first(where: \.1) {
                throw ValidationError("\(flag) comes from the config's [filter] section and its VMs' disks; give --config or the options, not both")
            }
            return
        }
        for (flag, value) in [("--socket", socket), ("--control", control), ("--state-dir", stateDir)] where value == nil {
            throw ValidationError("missing \(flag) (or give --config FILE)")
        }
        if disks.isEmpty { throw ValidationError("give at least one --disk NAME=PATH (or --config FILE)") }
        for d in disks where !d.contains("=") { throw ValidationError("--disk takes NAME=PATH, not '\(d)'") }
        if let tcp, NBDServer.parseTCPAddress(tcp) == nil {
            throw ValidationError("--tcp takes HOST:PORT, e.g. 127.0.0.1:10809 or [::1]:10809, not '\(tcp)'")
        }
        if tcpAllowRemote && tcp == nil { throw ValidationError("--tcp-allow-remote needs --tcp HOST:PORT") }
        if payloadBudget.bytes < 32 << 20 || payloadBudget.bytes > 1 << 40 {
            throw ValidationError("--payload-budget must be from 32M (the largest WRITE) to 1T, not \(payloadBudget)")
        }
        if payloadStallTimeout < 1 { throw ValidationError("--payload-stall-timeout must be at least 1 second") }
        if controlIdleTimeout < 1 { throw ValidationError("--control-idle-timeout must be at least 1 second") }
        if persistInterval < 1 { throw ValidationError("--persist-interval must be at least 1 second") }
        do {
            try trackerConfiguration.validate()
        } catch let e as TrackerError {
            throw ValidationError(e.message)
        }
    }

    /// The tracking layout the options describe.
    var trackerConfiguration: TrackerConfiguration {
        TrackerConfiguration(granularity: granularity?.bytes ?? 65536, activityLogExtentSize: activityLogExtent.bytes,
                             activityLogSlots: activityLogSlots)
    }

    /// What to serve: from the options, or from the nightly run's config.
    struct Setup {
        var disks: [(name: String, path: String)]
        var socket: String
        var control: String
        var stateDir: String
        var tcp: String?
        var granularity: UInt64
    }

    func setup() throws -> Setup {
        guard let config else {
            return Setup(disks: disks.map { d in
                            let parts = d.split(separator: "=", maxSplits: 1).map(String.init)
                            return (parts[0], absolutePath(parts[1]))
                         },
                         socket: socket!, control: control!, stateDir: stateDir!, tcp: tcp, granularity: granularity?.bytes ?? 65536)
        }
        let run: RunConfig
        do { run = try RunConfig.load(config) } catch let e as ConfigError {
            Output.error("\(e)")
            throw ExitCode(ExitCodes.unreachable)
        }
        guard let filter = run.filter else {
            Output.error("\(config): the config has no [filter] section; add one with control, socket and state-dir")
            throw ExitCode(ExitCodes.unreachable)
        }
        let served = run.vms.flatMap(\.disks).filter { $0.changes == .filter }.map { ($0.name, $0.path ?? "") }
        guard !served.isEmpty else {
            Output.error("\(config): no disk of any VM has its changes from the filter; nothing to serve")
            throw ExitCode(ExitCodes.unreachable)
        }
        return Setup(disks: served, socket: filter.socket, control: filter.control, stateDir: filter.stateDirectory,
                     tcp: filter.tcp, granularity: filter.granularity ?? 65536)
    }

    func run() async throws {
        var logger = Logger(label: "tessera.filter")
        logger.logLevel = .info
        let setup = try setup()
        let (socket, control, stateDir, tcp) = (setup.socket, setup.control, setup.stateDir, setup.tcp)
        var configuration = trackerConfiguration
        configuration.granularity = setup.granularity
        let service: FilterService
        do {
            service = try FilterService(stateDirectory: stateDir, configuration: configuration, logger: logger)
        } catch {
            Output.error("\(error)")
            throw ExitCode.failure
        }
        do {
            for d in setup.disks {
                try service.attach(name: d.name, path: d.path)
            }
        } catch {
            // Disks attached so far close cleanly: their state stays as a clean shutdown left it.
            service.closeAll()
            Output.error("\(error)")
            throw ExitCode.failure
        }
        // Before the ready line: a SIGTERM sent as soon as it is printed must not be lost.
        let termination = TerminationSignals()
        let server = NBDServer(provider: FilterExportProvider(service: service), logger: logger,
                               payloadBudget: Int(payloadBudget.bytes), payloadStallTimeout: .seconds(Int64(payloadStallTimeout)))
        // On the NBD server's event loop: it stops before the NBD server does.
        let controlServer = ControlServer(path: control, logger: logger, group: server.eventLoopGroup,
                                          idleTimeout: .seconds(controlIdleTimeout)) { try service.handle($0, $1) }
        var tcpEndpoint: (host: String, port: Int)?
        do {
            try await server.start(unixSocket: socket)
            if let tcp, let (host, port) = NBDServer.parseTCPAddress(tcp) {
                tcpEndpoint = (host, try await server.start(host: host, port: port, allowRemote: tcpAllowRemote))
            }
            try await controlServer.start()
        } catch {
            Output.error("\(error)")
            await controlServer.stop()
            try? await server.shutdown()
            service.closeAll()
            throw ExitCode.failure
        }
        for name in service.diskNames {
            print("serving \(name) on nbd+unix:///\(name)?socket=\(socket)")
            if let tcpEndpoint {
                print("serving \(name) on \(NBDServer.tcpURI(host: tcpEndpoint.host, port: tcpEndpoint.port, export: name))")
            }
        }
        print("control endpoint \(control)")
        fflush(nil)

        // Periodic persistence bounds what the activity log must replay after a crash.
        let interval = persistInterval
        let persister = Task.detached {
            while !Task.isCancelled {
                try? await Task.sleep(for: .seconds(interval))
                if Task.isCancelled { break }
                service.persistAll()
            }
        }
        await termination.wait()
        logger.info("stopping: finishing in-flight requests")
        persister.cancel()
        await controlServer.stop()
        try? await server.shutdown()
        service.closeAll()
        print("stopped cleanly")
    }
}
