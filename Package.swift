// swift-tools-version: 6.1
// Tessera: change block tracking, an NBD write-path filter, and a deduplicating
// backup repository for virtual disks stored as flat files.
import PackageDescription

let argumentParser = Target.Dependency.product(name: "ArgumentParser", package: "swift-argument-parser")
let nioCore = Target.Dependency.product(name: "NIOCore", package: "swift-nio")
let nioPosix = Target.Dependency.product(name: "NIOPosix", package: "swift-nio")
let systemPackage = Target.Dependency.product(name: "SystemPackage", package: "swift-system")
let logging = Target.Dependency.product(name: "Logging", package: "swift-log")
let tomlKit = Target.Dependency.product(name: "TOMLKit", package: "TOMLKit")

let package = Package(
    name: "Tessera",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "tessera", targets: ["tessera"]),
        // Test-only: an LD_PRELOAD library that makes one file-system call fail (StorageFaultTests).
        .library(name: "TesseraFaults", type: .dynamic, targets: ["TesseraFaults"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.0"),
        .package(url: "https://github.com/apple/swift-system", from: "1.8.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.0"),
        .package(url: "https://github.com/LebJe/TOMLKit", from: "0.6.0"),
    ],
    targets: [
        // MARK: - C libraries (Debian: libzstd-dev, libxxhash-dev). One Swift file imports each.
        .systemLibrary(name: "CZstd", pkgConfig: "libzstd", providers: [.apt(["libzstd-dev"])]),
        .systemLibrary(name: "CXXHash", pkgConfig: "libxxhash", providers: [.apt(["libxxhash-dev"])]),

        // MARK: - Layers, lowest first
        .target(name: "Codecs", dependencies: ["CZstd", "CXXHash"]),
        .target(name: "CLinuxShims"),
        // One way to run blocking work in parallel, cancellable (SIGINT/SIGTERM): every job uses it.
        .target(name: "Workers"),
        .target(name: "BlockIO", dependencies: ["CLinuxShims", systemPackage]),
        // The vocabulary and the wire the filter and the agent share (change IDs, the control
        // protocol, its client): they are peers that talk over a socket.
        .target(name: "TrackerControl", dependencies: ["Codecs", "BlockIO"]),
        .target(name: "ChangeTracking", dependencies: ["Codecs", "BlockIO", "TrackerControl"]),
        .target(name: "NBD", dependencies: ["BlockIO", nioCore, nioPosix, logging]),
        .target(name: "BackupRepository", dependencies: ["Codecs", "BlockIO", "Workers", systemPackage, logging]),
        .target(name: "Filter", dependencies: ["ChangeTracking", "TrackerControl", "NBD", "BlockIO", "Codecs", nioCore, nioPosix, logging]),
        .target(name: "Agent", dependencies: ["BackupRepository", "BlockIO", "CLinuxShims", "NBD", "TrackerControl", "Codecs", "Workers", logging]),
        // The nightly run: its config, quiesce through the guest agent, hooks, the run itself, reports.
        .target(name: "Nightly", dependencies: ["Agent", "BackupRepository", "TrackerControl", "BlockIO", "Workers", tomlKit, logging]),
        .executableTarget(name: "tessera", dependencies: [
            "BlockIO", "ChangeTracking", "TrackerControl", "NBD", "Filter", "BackupRepository", "Agent", "Workers", "Nightly",
            argumentParser, logging,
        ]),

        // MARK: - Tools (never imported by Sources)
        .executableTarget(name: "tessera-microbench", dependencies: ["ChangeTracking", "TrackerControl", "BackupRepository", "Codecs", "BlockIO", "NBD", logging],
                          path: "Tools/microbench"),
        .executableTarget(name: "tracker-torture", dependencies: ["ChangeTracking", "TrackerControl", "BlockIO"],
                          path: "Tools/tracker-torture"),
        // One function per parser of outside bytes: run by the fuzzer (Tools/fuzz) and by FuzzRegressionTests.
        .target(name: "FuzzTargets", dependencies: [
            "NBD", "Filter", "TrackerControl", "BlockIO", "ChangeTracking", "BackupRepository", "Codecs", "Nightly", nioCore,
        ], path: "Tools/fuzz-targets/FuzzTargets"),
        .target(name: "TesseraFaults", path: "Tools/faults/TesseraFaults"),
        .executableTarget(name: "make-fixtures", dependencies: ["BackupRepository", "Codecs", "BlockIO"],
                          path: "Tools/make-fixtures"),

        // MARK: - Tests
        .target(name: "TestSupport", dependencies: ["BlockIO", "Codecs", "CLinuxShims", "TrackerControl"], path: "Tests/TestSupport"),
        .testTarget(name: "CodecsTests", dependencies: ["Codecs", "TestSupport"]),
        .testTarget(name: "WorkersTests", dependencies: ["Workers"]),
        .testTarget(name: "BlockIOTests", dependencies: ["BlockIO", "TestSupport"]),
        .testTarget(name: "TrackerControlTests", dependencies: ["TrackerControl", "TestSupport"]),
        .testTarget(name: "ChangeTrackingTests", dependencies: ["ChangeTracking", "TrackerControl", "BlockIO", "TestSupport"]),
        .testTarget(name: "NBDTests", dependencies: ["NBD", "BlockIO", "TestSupport", nioCore, nioPosix]),
        .testTarget(name: "BackupRepositoryTests", dependencies: ["BackupRepository", "Codecs", "BlockIO", "TestSupport"]),
        .testTarget(name: "FilterTests", dependencies: ["Filter", "ChangeTracking", "TrackerControl", "NBD", "BlockIO", "TestSupport", nioCore]),
        .testTarget(name: "AgentTests", dependencies: ["Agent", "BackupRepository", "TrackerControl", "BlockIO", "Workers", "TestSupport", logging]),
        .testTarget(name: "NightlyTests", dependencies: ["Nightly", "BackupRepository", "TestSupport"]),
        .testTarget(name: "FuzzRegressionTests", dependencies: ["FuzzTargets", "TestSupport"]),
        .testTarget(name: "TesseraCLITests", dependencies: ["TestSupport", "BlockIO"]),
        // The real binary with libTesseraFaults.so preloaded (built with every product, never linked in).
        .testTarget(name: "StorageFaultTests", dependencies: ["TestSupport"]),
        // A real QEMU guest on the filter (TESSERA_VM_TESTS=1, on by default in Tools/test).
        .testTarget(name: "GuestTests", dependencies: ["TestSupport"]),
        // Parses every command line in-process (`@testable import tessera`); runs nothing.
        .testTarget(name: "TesseraCommandTests", dependencies: ["tessera", argumentParser]),
    ]
)

// MARK: - Fuzzing: the libFuzzer driver needs -sanitize=fuzzer, so it exists only under TESSERA_FUZZ=1 (Tools/fuzz)
if Context.environment["TESSERA_FUZZ"] == "1" {
    package.targets.append(.executableTarget(name: "tessera-fuzz", dependencies: ["FuzzTargets"], path: "Tools/fuzz-targets/Driver"))
}

for target in package.targets where [.regular, .executable, .test].contains(target.type) {
    target.swiftSettings = (target.swiftSettings ?? []) + [
        .swiftLanguageMode(.v6),
        .enableUpcomingFeature("ExistentialAny"),
        .enableUpcomingFeature("MemberImportVisibility"),
    ]
}
