/// The counter-based random draws of the random sparsifiers (DARE, DELLA): reproducible on any
/// machine, for every `--jobs` and tensor order, and easy to rebuild in numpy. With 64-bit
/// wrapping arithmetic:
/// ```
/// mix(z):  z ^= z >> 30; z *= 0xBF58476D1CE4E5B9; z ^= z >> 27; z *= 0x94D049BB133111EB; z ^= z >> 31
/// γ = 0x9E3779B97F4A7C15,  fnv(s) = 64-bit FNV-1a of the tensor name's UTF-8 bytes
/// key = mix(seed ⊕ fnv(name) ⊕ mix((i+1)·γ))          for input i
/// u_j = (mix(key + (j+1)·γ) >> 11) · 2⁻⁵³              for element j (C order)
/// ```
public struct Draws: Sendable, Equatable {
    static let gamma: UInt64 = 0x9E37_79B9_7F4A_7C15

    /// The stream's key.
    public let key: UInt64

    /// The draws of input `input` for the tensor called `name`.
    public init(seed: UInt64, name: String, input: Int) {
        key = Self.mix(seed ^ Self.fnv(name) ^ Self.mix(UInt64(input + 1) &* Self.gamma))
    }

    /// `u_j` ∈ [0, 1).
    @inline(__always)
    public func u(_ j: Int) -> Double {
        Double(Self.mix(key &+ UInt64(j + 1) &* Self.gamma) >> 11) * 0x1p-53
    }

    @inline(__always)
    static func mix(_ value: UInt64) -> UInt64 {
        var z = value
        z ^= z >> 30
        z &*= 0xBF58_476D_1CE4_E5B9
        z ^= z >> 27
        z &*= 0x94D0_49BB_1331_11EB
        z ^= z >> 31
        return z
    }

    /// 64-bit FNV-1a.
    static func fnv(_ name: String) -> UInt64 {
        var hash: UInt64 = 0xCBF2_9CE4_8422_2325
        for byte in name.utf8 {
            hash ^= UInt64(byte)
            hash &*= 0x0000_0100_0000_01B3
        }
        return hash
    }
}
