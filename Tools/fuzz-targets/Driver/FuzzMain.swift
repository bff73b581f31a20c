// The libFuzzer driver: built only with TESSERA_FUZZ=1 and -sanitize=fuzzer (Tools/fuzz does
// both). TESSERA_FUZZ_TARGET picks the parser (FuzzTargets.fuzzTargets).
import Foundation
import FuzzTargets

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    let bytes = count == 0 ? [] : Array(UnsafeBufferPointer(start: data!, count: count))
    selected(bytes)
    return 0
}

nonisolated(unsafe) var selected: @Sendable ([UInt8]) -> Void = { _ in }

typealias FuzzCallback = @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt

/// libFuzzer's driver (compiler-rt). SwiftPM links its own `main`, so libFuzzer's is never
/// used: this program's main picks the target, then hands over to the driver.
@_silgen_name("LLVMFuzzerRunDriver")
func runDriver(_ argc: UnsafeMutablePointer<CInt>,
               _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>,
               _ callback: FuzzCallback) -> CInt

@main
enum FuzzMain {
    static func main() {
        let name = ProcessInfo.processInfo.environment["TESSERA_FUZZ_TARGET"] ?? ""
        guard let target = fuzzTargets[name] else {
            FileHandle.standardError.write(Data("set TESSERA_FUZZ_TARGET to one of: \(fuzzTargets.keys.sorted().joined(separator: " "))\n".utf8))
            exit(2)
        }
        selected = target
        var argc = CommandLine.argc
        var argv = CommandLine.unsafeArgv
        exit(runDriver(&argc, &argv) { fuzzOne($0, $1) })
    }
}
