import CulvertFuzzing

// `culvert-fuzz TARGET [libFuzzer options] [CORPUS...]`: runs libFuzzer on one of `FuzzTarget`'s targets.

/// The target named on the command line (set once, before libFuzzer starts calling `fuzz`).
nonisolated(unsafe) private var selectedTarget = FuzzTarget.frameDecoder

/// libFuzzer's entry point: one input for the selected target.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ start: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    let bytes = start.map { Array(UnsafeBufferPointer(start: $0, count: count)) } ?? []
    selectedTarget.run(bytes)
    return 0
}

/// libFuzzer's driver, which runs `LLVMFuzzerTestOneInput` as its command line says.
@_silgen_name("LLVMFuzzerRunDriver")
func runFuzzerDriver(
    _ argc: UnsafeMutablePointer<CInt>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt
) -> CInt

/// The executable's entry point under the name SwiftPM links as `main`: takes the target from the first argument and
/// hands the rest over to libFuzzer.
@_cdecl("culvert_fuzz_main")
public func main(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> CInt {
    let names = FuzzTarget.allCases.map(\.rawValue).joined(separator: ", ")
    guard argc >= 2, let name = argv[1].map({ String(cString: $0) }), let target = FuzzTarget(rawValue: name) else {
        print("usage: culvert-fuzz TARGET [libFuzzer options] [CORPUS...]; TARGET: \(names)")
        return 2
    }
    selectedTarget = target
    // libFuzzer sees the program name followed by its own arguments.
    argv[1] = argv[0]
    var count = argc - 1
    var arguments: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = argv + 1
    return runFuzzerDriver(&count, &arguments, fuzz)
}
