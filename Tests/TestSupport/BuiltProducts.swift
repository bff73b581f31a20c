import Foundation

/// Where `swift build` put the executables (tessera, tracker-torture, ...), found from the
/// running test bundle, and the project's Fixtures folder, found from this file.
public enum BuiltProducts {
    public static var directory: String {
        // The test bundle lives next to the products: .build/<triple>/debug/TesseraPackageTests.xctest
        let bundle = Bundle.main.bundleURL
        if bundle.pathExtension == "xctest" { return bundle.deletingLastPathComponent().path }
        return bundle.path
    }

    public static func executable(_ name: String) -> String { "\(directory)/\(name)" }

    public static var fixtures: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("Fixtures").path
    }
}
