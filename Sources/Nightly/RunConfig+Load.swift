import BackupRepository
import BlockIO
import Foundation
import TrackerControl

extension RunConfig {
    /// Reads, checks and returns the config: unknown keys, wrong types, missing files,
    /// duplicate names and a disk in two VMs are errors naming the file, line and key.
    public static func load(_ file: String) throws -> RunConfig {
        let text: String
        do {
            text = String(decoding: try DurableFile.read(file), as: UTF8.self)
        } catch {
            throw ConfigError(file: file, line: nil, key: nil, message: "cannot read the config: \(error)")
        }
        let config = try parse(text, file: file)
        try config.checkFiles(TOMLDocument(text: text, file: file))
        return config
    }

    /// The config in `text`, checked for everything but the file system.
    public static func parse(_ text: String, file: String) throws -> RunConfig {
        let document = try TOMLDocument(text: text, file: file)
        var top = TableReader(document: document, file: file, path: "", values: document.root)
        guard let repository = try top.string("repository") else {
            throw ConfigError(file: file, line: nil, key: "repository", message: "the repository is missing: repository = \"/backup/repo\"")
        }
        var filter: FilterSettings?
        if var t = try top.table("filter") {
            guard let control = try t.path("control"), let socket = try t.path("socket"), let state = try t.path("state-dir") else {
                throw t.error(nil, "the filter needs control, socket and state-dir (the paths `tessera filter serve` uses)")
            }
            filter = FilterSettings(control: control, socket: socket, stateDirectory: state, tcp: try t.string("tcp"),
                                    granularity: try t.size("granularity"))
            try t.finish()
        }
        var run = RunSettings()
        if var t = try top.table("run") {
            run.parallelVMs = try t.int("parallel-vms", atLeast: 1) ?? 1
            run.window = try t.duration("window")
            run.metrics = try t.path("metrics")
            run.report = try t.path("report")
            run.vm = try t.vmSettings(run.vm)
            try t.finish()
        }
        if var t = try top.table("hooks") {
            run.vm.hooks = try t.hooks()
            try t.finish()
        }
        var retention: RetentionSettings?
        if var t = try top.table("retention") {
            let policy = RetentionPolicy(keepLast: try t.int("keep-last", atLeast: 0) ?? 0,
                                         keepHourly: try t.int("keep-hourly", atLeast: 0) ?? 0,
                                         keepDaily: try t.int("keep-daily", atLeast: 0) ?? 0,
                                         keepWeekly: try t.int("keep-weekly", atLeast: 0) ?? 0,
                                         keepMonthly: try t.int("keep-monthly", atLeast: 0) ?? 0,
                                         keepYearly: try t.int("keep-yearly", atLeast: 0) ?? 0,
                                         keepTags: try t.strings("keep-tag") ?? [],
                                         keepWithin: try t.duration("keep-within"))
            guard !policy.isEmpty else {
                throw t.error(nil, "a retention policy keeps something: give keep-last, keep-daily, ... or keep-within")
            }
            retention = RetentionSettings(policy: policy, prune: try t.bool("prune") ?? true)
            try t.finish()
        }
        var verify: VerifySettings?
        if var t = try top.table("verify") {
            guard let every = try t.int("read-data-every", atLeast: 1) else {
                throw t.error(nil, "say how often all data is re-read: read-data-every = 7 (nights)")
            }
            verify = VerifySettings(readDataEvery: every)
            try t.finish()
        }
        var vms: [VM] = []
        var vmNames: [String: String] = [:], diskNames: [String: String] = [:]
        for var t in try top.tables("vm") {
            guard let name = try t.string("name") else { throw t.error(nil, "a VM needs a name: name = \"web1\"") }
            if let problem = DiskName.problem(name) { throw t.error("name", "VM name '\(name)': \(problem)") }
            if let first = vmNames[name] { throw t.error("name", "VM '\(name)' is already defined at \(first)") }
            vmNames[name] = t.place("name")
            var settings = try t.vmSettings(run.vm)
            if var h = try t.table("hooks") {
                let own = try h.hooks()
                for phase in [Hooks.Phase.jobStart, .jobEnd] where own.commands[phase] != nil {
                    throw h.error(phase.rawValue, "\(phase.rawValue) hooks run once per run, not per VM: put them in the top-level [hooks]")
                }
                settings.hooks = run.vm.hooks.adding(own)
                try h.finish()
            }
            let guestAgent = try t.path("guest-agent")
            if settings.quiesce == .required && guestAgent == nil {
                throw t.error("quiesce", "quiesce = \"required\" needs a guest agent: guest-agent = \"/run/qemu/\(name).qga\"")
            }
            var disks: [Disk] = []
            for var d in try t.tables("disk") {
                guard let diskName = try d.string("name") else { throw d.error(nil, "a disk needs a name: name = \"\(name)-root\"") }
                if let problem = DiskName.problem(diskName) { throw d.error("name", "disk name '\(diskName)': \(problem)") }
                if let first = diskNames[diskName] {
                    throw d.error("name", "disk '\(diskName)' is already defined at \(first); disk names are unique in the repository")
                }
                diskNames[diskName] = d.place("name")
                let path = try d.path("path")
                let kind = try d.string("changes") ?? (filter == nil ? "scan" : "filter")
                let changes: Changes
                switch kind {
                case "filter":
                    guard filter != nil else { throw d.error("changes", "changes = \"filter\" needs a [filter] section (its control socket)") }
                    changes = .filter
                case "nbd":
                    guard let uri = try d.string("nbd") else { throw d.error("changes", "changes = \"nbd\" needs nbd = \"nbd+unix:///EXPORT?socket=PATH\"") }
                    changes = .nbd(uri: uri, bitmap: try d.string("bitmap"))
                case "scan":
                    changes = .scan
                default:
                    throw d.error("changes", "changes is \"filter\", \"nbd\" or \"scan\", not \"\(kind)\"")
                }
                if path == nil, case .nbd = changes {} else if path == nil {
                    throw d.error(nil, "disk '\(diskName)' needs its path (a raw file or a VMDK descriptor)")
                }
                disks.append(Disk(name: diskName, path: path, changes: changes))
                try d.finish()
            }
            guard !disks.isEmpty else { throw t.error(nil, "VM '\(name)' has no disk: add a [[vm.disk]] with name and path") }
            vms.append(VM(name: name, disks: disks, guestAgent: guestAgent, settings: settings))
            try t.finish()
        }
        guard !vms.isEmpty else {
            throw ConfigError(file: file, line: nil, key: "vm", message: "no VM to back up: add a [[vm]] with a name and a [[vm.disk]]")
        }
        try top.finish()
        return RunConfig(file: file, repository: repository, filter: filter, run: run, retention: retention, verify: verify, vms: vms)
    }

    /// Disk files that must exist, hooks that must be executable, and no file backed up
    /// twice (the same inode under two names: two disks would track one file).
    func checkFiles(_ document: TOMLDocument) throws {
        func fail(_ key: String, _ message: String) -> ConfigError {
            ConfigError(file: file, line: document.lines[key], key: key, message: message)
        }
        // The night's outputs: a typo here would only show after every backup had run.
        for (key, path) in [("run.metrics", run.metrics), ("run.report", run.report)] {
            guard let path else { continue }
            let folder = DurableFile.parentDirectory(of: path)
            var isFolder: ObjCBool = false
            guard FileManager.default.fileExists(atPath: folder, isDirectory: &isFolder), isFolder.boolValue else {
                throw fail(key, "the folder \(folder) does not exist; create it, or correct the path")
            }
        }
        var seen: [FileIdentity: String] = [:]
        for (v, vm) in vms.enumerated() {
            for (d, disk) in vm.disks.enumerated() {
                guard let path = disk.path else { continue }
                let key = "vm[\(v)].disk[\(d)].path"
                let identity: FileIdentity
                do {
                    identity = try BlockFile(path: path, mode: .readOnly).identity()
                } catch {
                    throw fail(key, "disk '\(disk.name)': \(path) cannot be opened (\(error)); is the path right?")
                }
                let inode = FileIdentity(device: identity.device, inode: identity.inode, size: 0, modificationNanoseconds: 0)
                if let other = seen[inode] {
                    throw fail(key, "disk '\(disk.name)' is the same file as disk '\(other)': a file is backed up (and tracked) once")
                }
                seen[inode] = disk.name
            }
            // A VM's hooks are the global ones and then its own: name each where it is written.
            for (phase, commands) in vm.settings.hooks.commands {
                let global = run.vm.hooks.commands[phase] ?? []
                for (i, argv) in commands.enumerated() where !FileManager.default.isExecutableFile(atPath: argv[0]) {
                    let key = i < global.count ? "hooks.\(phase.rawValue)" : "vm[\(v)].hooks.\(phase.rawValue)"
                    throw fail(key, "hook \(argv[0]) is not an executable file (hooks run without a shell: give the program's absolute path)")
                }
            }
        }
    }
}

/// Reads one table of the document, remembering which keys were used so that any other key
/// is reported as unknown (a typo in a config must not silently mean "default").
struct TableReader {
    let document: TOMLDocument
    let file: String
    let path: String
    let values: [String: TOMLDocument.Value]
    private var used: Set<String> = []

    init(document: TOMLDocument, file: String, path: String, values: [String: TOMLDocument.Value]) {
        self.document = document
        self.file = file
        self.path = path
        self.values = values
    }

    func keyPath(_ key: String?) -> String { [path, key ?? ""].filter { !$0.isEmpty }.joined(separator: ".") }

    /// "line N" of a key (or of the table), for messages that point at another place.
    func place(_ key: String?) -> String { document.lines[keyPath(key)].map { "line \($0)" } ?? keyPath(key) }

    func error(_ key: String?, _ message: String) -> ConfigError {
        let k = keyPath(key)
        return ConfigError(file: file, line: document.lines[k] ?? document.lines[path], key: k.isEmpty ? nil : k, message: message)
    }

    private mutating func take(_ key: String) -> TOMLDocument.Value? {
        used.insert(key)
        return values[key]
    }

    mutating func string(_ key: String) throws -> String? {
        guard let v = take(key) else { return nil }
        guard case .string(let s) = v, !s.isEmpty else { throw error(key, "expected a non-empty string (in quotes)") }
        return s
    }

    /// An absolute path.
    mutating func path(_ key: String) throws -> String? {
        guard let s = try string(key) else { return nil }
        guard s.hasPrefix("/") else { throw error(key, "give an absolute path, not '\(s)' (the run does not start in the config's folder)") }
        return s
    }

    mutating func int(_ key: String, atLeast minimum: Int) throws -> Int? {
        guard let v = take(key) else { return nil }
        guard case .int(let n) = v, n >= minimum else { throw error(key, "expected a whole number of at least \(minimum)") }
        return n
    }

    mutating func bool(_ key: String) throws -> Bool? {
        guard let v = take(key) else { return nil }
        guard case .bool(let b) = v else { throw error(key, "expected true or false") }
        return b
    }

    mutating func strings(_ key: String) throws -> [String]? {
        guard let v = take(key) else { return nil }
        guard case .array(let items) = v else { throw error(key, "expected a list of strings: [\"a\", \"b\"]") }
        return try items.map {
            guard case .string(let s) = $0 else { throw error(key, "expected a list of strings: [\"a\", \"b\"]") }
            return s
        }
    }

    /// `90s`, `30m`, `2h`, `1d`, or a number of seconds.
    mutating func duration(_ key: String) throws -> Double? {
        guard let v = take(key) else { return nil }
        switch v {
        case .int(let n) where n >= 0: return Double(n)
        case .string(let s):
            let units: [Character: Double] = ["s": 1, "m": 60, "h": 3600, "d": 86400]
            if let unit = s.last.flatMap({ units[$0] }), let n = Double(s.dropLast()), n >= 0 { return n * unit }
        default: break
        }
        throw error(key, "expected a duration such as \"90s\", \"30m\", \"2h\" or \"1d\"")
    }

    /// `64K`, `1M`, or a number of bytes.
    mutating func size(_ key: String) throws -> UInt64? {
        guard let v = take(key) else { return nil }
        switch v {
        case .int(let n) where n > 0: return UInt64(n)
        case .string(let s):
            let shifts: [Character: UInt64] = ["K": 10, "M": 20, "G": 30]
            if let shift = s.uppercased().last.flatMap({ shifts[$0] }), let n = UInt64(s.dropLast()) { return n << shift }
        default: break
        }
        throw error(key, "expected a size such as \"64K\" or 65536")
    }

    mutating func table(_ key: String) throws -> TableReader? {
        guard let v = take(key) else { return nil }
        guard case .table(let t) = v else { throw error(key, "expected a table: [\(keyPath(key))]") }
        return TableReader(document: document, file: file, path: keyPath(key), values: t)
    }

    /// An array of tables (`[[vm]]`).
    mutating func tables(_ key: String) throws -> [TableReader] {
        guard let v = take(key) else { return [] }
        guard case .array(let items) = v else { throw error(key, "expected tables: [[\(keyPath(key))]]") }
        return try items.enumerated().map { i, item in
            guard case .table(let t) = item else { throw error(key, "expected tables: [[\(keyPath(key))]]") }
            return TableReader(document: document, file: file, path: "\(keyPath(key))[\(i)]", values: t)
        }
    }

    /// The settings a VM may override, on top of `base`.
    mutating func vmSettings(_ base: RunConfig.VMSettings) throws -> RunConfig.VMSettings {
        var s = base
        if let q = try string("quiesce") {
            guard let mode = RunConfig.Quiesce(rawValue: q) else {
                throw error("quiesce", "quiesce is \"off\", \"try\" or \"required\", not \"\(q)\"")
            }
            s.quiesce = mode
        }
        s.retries = try int("retries", atLeast: 0) ?? s.retries
        s.retryDelay = try duration("retry-delay") ?? s.retryDelay
        s.hookTimeout = try duration("hook-timeout") ?? s.hookTimeout
        s.freezeTimeout = try duration("freeze-timeout") ?? s.freezeTimeout
        return s
    }

    /// A hooks table: each phase is one command (`["/bin/prog", "arg"]`) or several
    /// (`[["/bin/a"], ["/bin/b", "x"]]`).
    mutating func hooks() throws -> RunConfig.Hooks {
        var hooks = RunConfig.Hooks()
        for phase in RunConfig.Hooks.Phase.allCases {
            guard let v = take(phase.rawValue) else { continue }
            let shape = "expected a command as a list of words, [\"/usr/local/bin/prog\", \"arg\"], or a list of such lists"
            guard case .array(let items) = v, !items.isEmpty else { throw error(phase.rawValue, shape) }
            func argv(_ list: [TOMLDocument.Value]) throws -> [String] {
                let words = try list.map { item -> String in
                    guard case .string(let s) = item else { throw error(phase.rawValue, shape) }
                    return s
                }
                guard let program = words.first, program.hasPrefix("/") else {
                    throw error(phase.rawValue, "a hook starts with the program's absolute path (hooks run without a shell)")
                }
                return words
            }
            if case .array = items[0] {
                hooks.commands[phase] = try items.map {
                    guard case .array(let words) = $0 else { throw error(phase.rawValue, shape) }
                    return try argv(words)
                }
            } else {
                hooks.commands[phase] = [try argv(items)]
            }
        }
        return hooks
    }

    /// Every key of the table was read: anything else is a typo or a setting that does not exist.
    func finish() throws {
        let unknown = Set(values.keys).subtracting(used).sorted()
        guard let first = unknown.first else { return }
        throw error(first, "unknown setting\(unknown.count > 1 ? " (also: \(unknown.dropFirst().joined(separator: ", ")))" : ""); the settings here are \(used.sorted().joined(separator: ", "))")
    }
}
