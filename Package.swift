// swift-tools-version:6.1
import PackageDescription

let package = Package(
    name: "IDMerge",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "idmerge", targets: ["idmerge"]),
        .library(name: "IDMergeCore", targets: ["IDMergeCore"]),
        .library(name: "PGClient", targets: ["PGClient"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1", traits: ["FullFoundation"]),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-crypto", from: "4.5.2"),
    ],
    targets: [
        .systemLibrary(
            name: "CLibPQ",
            pkgConfig: "libpq",
            providers: [.apt(["libpq-dev", "pkg-config"]), .brew(["libpq", "pkg-config"])]
        ),
        .systemLibrary(
            name: "CZlib",
            providers: [.apt(["zlib1g-dev"])]
        ),
        .target(
            name: "PGClient",
            dependencies: [
                "CLibPQ",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .target(
            name: "IDMergeSQL",
            path: ".",
            exclude: [
                "Sources/CLibPQ", "Sources/CZlib", "Sources/PGClient", "Sources/IDMergeCore", "Sources/IDMergeServer",
                "Sources/idmerge",
                "Tests", "scripts", "Benchmarks", "README.md", "BENCHMARKS.md", ".ci", ".swift-format",
            ],
            sources: ["Sources/IDMergeSQL"],
            resources: [.copy("migrations"), .copy("sql")]
        ),
        .target(
            name: "IDMergeCore",
            dependencies: [
                "PGClient",
                "IDMergeSQL",
                "CZlib",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .target(
            name: "IDMergeServer",
            dependencies: [
                "IDMergeCore",
                "PGClient",
                "CZlib",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(
            name: "idmerge",
            dependencies: [
                "IDMergeCore",
                "IDMergeServer",
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                "PGClient",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .target(
            name: "IDMergeTestSupport",
            dependencies: [
                "IDMergeCore", "PGClient", "CZlib", .product(name: "Logging", package: "swift-log"),
            ],
            path: "Tests/IDMergeTestSupport"
        ),
        .testTarget(
            name: "PGClientTests",
            dependencies: ["PGClient"]
        ),
        .testTarget(
            name: "IDMergeCoreTests",
            dependencies: ["IDMergeCore", "PGClient", "CZlib", "IDMergeTestSupport"]
        ),
        .testTarget(
            name: "IDMergeServerTests",
            dependencies: [
                "IDMergeServer", "IDMergeCore", "PGClient", "CZlib", "IDMergeTestSupport",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
    ]
)
