// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "wsamerge",
    products: [
        .executable(name: "wsamerge", targets: ["wsamerge"]),
        .library(name: "WSAMergeKit", targets: ["WSAMergeKit"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        // YAML (merge recipes): parsed into nodes with line marks, then validated into typed values.
        .package(url: "https://github.com/jpsim/Yams", from: "6.0.0"),
    ],
    targets: [
        // libzip (reading .npz) and zlib (deflate + CRC-32 when writing .npz).
        .systemLibrary(
            name: "CZip",
            pkgConfig: "libzip",
            providers: [.apt(["libzip-dev", "zlib1g-dev"])]
        ),
        // The hot loops, compiled per instruction-set level (baseline, AVX2, AVX-512) and picked at run time.
        .target(
            name: "CKernels",
            cSettings: [.unsafeFlags(["-O3", "-ffp-contract=off"])]
        ),
        .target(
            name: "WSAMergeKit",
            dependencies: ["CZip", "CKernels", .product(name: "Yams", package: "Yams")]
        ),
        .executableTarget(
            name: "wsamerge",
            dependencies: [
                "WSAMergeKit",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .testTarget(name: "WSAMergeKitTests", dependencies: ["WSAMergeKit", "CKernels"]),
        .testTarget(name: "wsamergeTests", dependencies: ["wsamerge"]),
    ],
    // The kernels share read-only buffers across worker threads by design (see Partition).
    swiftLanguageModes: [.v6]
)
