import CKernels
#if canImport(Glibc)
import Glibc
#endif

/// The instruction-set level the C kernels run at. Every level computes the same bits (the same
/// operations in the same order per lane, no fused multiply-add); higher levels put more lanes in
/// one instruction. The best level the CPU runs is used unless the environment variable
/// `WSAMERGE_SIMD` caps it.
public enum SIMDLevel: Int32, CaseIterable, Sendable, CustomStringConvertible {
    case baseline = 0, avx2 = 1, avx512 = 2

    /// The highest level this CPU runs.
    public static var best: SIMDLevel { SIMDLevel(rawValue: wsk_best_simd_level()) ?? .baseline }

    /// The level in use.
    public static var current: SIMDLevel { SIMDLevel(rawValue: wsk_simd_level()) ?? .baseline }

    #if DEBUG
    /// Uses `level` (capped at `best`) from now on; returns the level in use. For tests, which
    /// compare the levels' bytes; users cap the level with `WSAMERGE_SIMD`.
    @discardableResult
    static func use(_ level: SIMDLevel) -> SIMDLevel {
        SIMDLevel(rawValue: wsk_use_simd_level(level.rawValue)) ?? .baseline
    }
    #endif

    /// `WSAMERGE_SIMD` when it is set and not empty: a usage error unless it names a level.
    public static func checkEnvironment() throws {
        guard let raw = getenv("WSAMERGE_SIMD"), raw.pointee != 0 else { return }
        let name = String(cString: raw)
        guard wsk_simd_level_named(name) >= 0 else {
            let names = allCases.map(\.description).joined(separator: ", ")
            throw WSAMergeError.usage("WSAMERGE_SIMD: unknown level '\(name)' (expected one of \(names))")
        }
    }

    public var description: String { String(cString: wsk_simd_level_name(rawValue)) }
}
