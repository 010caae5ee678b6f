// swift-tools-version:6.0
import PackageDescription

// The kernels' flags: -O3 in every configuration (so the tests run optimised kernels) and no
// fused multiply-add (also set by a pragma in kernels.c, so the bits do not depend on it).
// Unsafe flags are refused in a package used as a dependency, so they apply only when
// WSAMERGE_KERNEL_FLAGS is set, as the Makefile does; without them release builds use -O2.
let kernelFlags: [CSetting] = Context.environment["WSAMERGE_KERNEL_FLAGS"] == nil ? [] : [.unsafeFlags(["-O3", "-ffp-contract=off"])]

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
            cSettings: kernelFlags
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
        .testTarget(name: "wsamergeTests", dependencies: ["wsamerge", "WSAMergeKit"]),
    ],
    // The kernels share read-only buffers across worker threads by design (see Partition).
    swiftLanguageModes: [.v6]
)
