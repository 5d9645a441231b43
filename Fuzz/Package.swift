// swift-tools-version: 6.1
// The libFuzzer executable for Culvert's parsers (`culvert-fuzz TARGET …`, one target of `CulvertFuzzing.FuzzTarget`
// at a time). Built apart from the main package because every module is compiled with -sanitize=fuzzer
// (scripts/fuzz does it).
import PackageDescription

let package = Package(
    name: "CulvertFuzz",
    platforms: [.macOS(.v14)],
    dependencies: [.package(name: "culvert", path: "..")],
    targets: [
        .executableTarget(
            name: "culvert-fuzz",
            dependencies: [.product(name: "CulvertFuzzing", package: "culvert")],
            swiftSettings: [.swiftLanguageMode(.v6)]
        )
    ]
)
