// swift-tools-version: 6.1
// The libFuzzer executable for Culvert's parsers (`culvert-fuzz TARGET …`, one target of `CulvertFuzzing.FuzzTarget`
// at a time). Built apart from the main package because every module is compiled with -sanitize=fuzzer
// (scripts/fuzz does it). The fuzz targets' bodies (Sources/CulvertFuzzing, linked here) are not a product of the
// main package: users of the library never see them.
import PackageDescription

let package = Package(
    name: "CulvertFuzz",
    platforms: [.macOS(.v14)],
    dependencies: [
        .package(name: "culvert", path: ".."),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
    ],
    targets: [
        .target(
            name: "CulvertFuzzing",
            dependencies: [
                .product(name: "CulvertCore", package: "culvert"),
                .product(name: "CulvertTransport", package: "culvert"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
            ],
            swiftSettings: [.swiftLanguageMode(.v6), .enableUpcomingFeature("ExistentialAny")]
        ),
        .executableTarget(
            name: "culvert-fuzz",
            dependencies: ["CulvertFuzzing"],
            swiftSettings: [.swiftLanguageMode(.v6)]
        ),
    ]
)
