import CKernels

/// Conversions between stored little-endian elements and `Double`.
///
/// Decoding is exact for every decodable type. Encoding rounds once to nearest, ties to even;
/// BF16 goes through a round-to-odd `Float` so a `Double` is never rounded twice.
extension DType {
    /// Decodes `count` little-endian elements stored at `source` into `destination`.
    ///
    /// - Precondition: `isDecodable`.
    /// - Complexity: O(count).
    public func decode(_ source: UnsafeRawPointer, count: Int, into destination: UnsafeMutablePointer<Double>) {
        switch self {
        case .F64:
            for i in 0..<count { destination[i] = source.loadUnaligned(fromByteOffset: 8 &* i, as: Double.self) }
        case .F32:
            wsk_decode_f32(source, count, destination)
        case .BF16:
            wsk_decode_bf16(source, count, destination)
        case .F16:
            wsk_decode_f16(source, count, destination)
        case .BOOL:
            for i in 0..<count { destination[i] = source.load(fromByteOffset: i, as: UInt8.self) == 0 ? 0 : 1 }
        case .U8:
            for i in 0..<count { destination[i] = Double(source.load(fromByteOffset: i, as: UInt8.self)) }
        case .I8:
            for i in 0..<count { destination[i] = Double(source.load(fromByteOffset: i, as: Int8.self)) }
        case .U16:
            for i in 0..<count { destination[i] = Double(source.loadUnaligned(fromByteOffset: 2 &* i, as: UInt16.self)) }
        case .I16:
            for i in 0..<count { destination[i] = Double(source.loadUnaligned(fromByteOffset: 2 &* i, as: Int16.self)) }
        case .U32:
            for i in 0..<count { destination[i] = Double(source.loadUnaligned(fromByteOffset: 4 &* i, as: UInt32.self)) }
        case .I32:
            for i in 0..<count { destination[i] = Double(source.loadUnaligned(fromByteOffset: 4 &* i, as: Int32.self)) }
        case .U64:
            for i in 0..<count { destination[i] = Double(source.loadUnaligned(fromByteOffset: 8 &* i, as: UInt64.self)) }
        case .I64:
            for i in 0..<count { destination[i] = Double(source.loadUnaligned(fromByteOffset: 8 &* i, as: Int64.self)) }
        case .F8_E4M3, .F8_E5M2, .F8_E8M0, .F8_E4M3FNUZ, .F8_E5M2FNUZ:
            let table = Minifloat.table(for: self)
            for i in 0..<count { destination[i] = table[Int(source.load(fromByteOffset: i, as: UInt8.self))] }
        case .F4, .F6_E2M3, .F6_E3M2, .C64:
            preconditionFailure("\(rawValue) is not decodable")
        }
    }

    /// Encodes `count` doubles into little-endian elements of this type at `destination`,
    /// rounding to nearest, ties to even.
    ///
    /// - Precondition: `isEncodable`.
    public func encode(_ source: UnsafePointer<Double>, count: Int, into destination: UnsafeMutableRawPointer) {
        switch self {
        case .F64:
            for i in 0..<count { destination.storeBytes(of: source[i], toByteOffset: 8 &* i, as: Double.self) }
        case .F32:
            wsk_encode_f32(source, count, destination)
        case .F16:
            encodeFloat16(source, count: count, into: destination)
        case .BF16:
            encodeBFloat16(source, count: count, into: destination)
        case .F8_E4M3, .F8_E5M2:
            let encoder = Minifloat.encoder(for: self)
            for i in 0..<count { destination.storeBytes(of: encoder.encode(source[i]), toByteOffset: i, as: UInt8.self) }
        default:
            preconditionFailure("\(rawValue) is not encodable")
        }
    }
}

extension DType {
    /// The kind the C kernels read in place (`WSK_BF16`, `WSK_F16`, `WSK_F32`, `WSK_F64`), for the dtypes
    /// they read without a decoded copy.
    var rawKind: Int32? {
        switch self {
        case .BF16: Int32(WSK_BF16)
        case .F16: Int32(WSK_F16)
        case .F32: Int32(WSK_F32)
        case .F64: Int32(WSK_F64)
        default: nil
        }
    }
}

/// BF16 encoding: `wsk_encode_bf16` rounds on the FPU (exact ties-to-even wherever the result
/// is a normal BF16 or ±0); a call that meets a subnormal, overflowing, infinite or NaN result
/// is redone element by element with `bfloat16Bits`.
func encodeBFloat16(_ source: UnsafePointer<Double>, count: Int, into destination: UnsafeMutableRawPointer) {
    guard wsk_encode_bf16(source, count, destination) != 0 else { return }
    for i in 0..<count {
        destination.storeBytes(of: bfloat16Bits(source[i]), toByteOffset: 2 &* i, as: UInt16.self)
    }
}

/// F16 encoding: `wsk_encode_f16` rounds on the FPU as `wsk_encode_bf16` does (subnormal results
/// included); a call that meets an overflowing, infinite or NaN result is redone element by
/// element with `Float16(_:)`, which rounds a `Double` once (LLVM's `fptrunc`).
func encodeFloat16(_ source: UnsafePointer<Double>, count: Int, into destination: UnsafeMutableRawPointer) {
    guard wsk_encode_f16(source, count, destination) != 0 else { return }
    for i in 0..<count {
        destination.storeBytes(of: Float16(source[i]).bitPattern, toByteOffset: 2 &* i, as: UInt16.self)
    }
}

/// The BF16 bit pattern nearest to `value` (ties to even), rounding only once.
///
/// `Float(value)` is first made round-to-odd (stepped back toward zero where it rounded away
/// from zero, then the lowest bit set when inexact), which keeps what the second rounding to 8
/// significant bits needs; branch-free so the loop stays tight.
@inline(__always)
func bfloat16Bits(_ value: Double) -> UInt16 {
    let single = Float(value)
    let back = Double(single)
    let inexact: UInt32 = back != value ? 1 : 0
    let overshoot: UInt32 = back.magnitude > value.magnitude ? 1 : 0
    let bits = (single.bitPattern &- overshoot) | inexact
    let rounded = UInt16(truncatingIfNeeded: (bits &+ 0x7FFF &+ ((bits &>> 16) & 1)) &>> 16)
    return value.isNaN ? (UInt16(truncatingIfNeeded: single.bitPattern &>> 16) | 0x7FC0) : rounded
}

/// 8-bit float formats, decoded through 256-entry tables (ml_dtypes semantics).
enum Minifloat {
    struct Format {
        let exponentBits: Int
        let mantissaBits: Int
        let bias: Int
        /// IEEE-style all-ones exponent (inf and NaN), as in E5M2.
        let ieeeSpecials: Bool
        /// Only S.1111.111 is NaN and there is no infinity (the "fn" formats, E4M3).
        let fnNaN: Bool
        /// 0x80 is the only NaN and there is no negative zero ("fnuz").
        let unsignedZeroNaN: Bool
    }

    static func format(_ dtype: DType) -> Format {
        switch dtype {
        case .F8_E4M3: Format(exponentBits: 4, mantissaBits: 3, bias: 7, ieeeSpecials: false, fnNaN: true, unsignedZeroNaN: false)
        case .F8_E5M2: Format(exponentBits: 5, mantissaBits: 2, bias: 15, ieeeSpecials: true, fnNaN: false, unsignedZeroNaN: false)
        case .F8_E4M3FNUZ: Format(exponentBits: 4, mantissaBits: 3, bias: 8, ieeeSpecials: false, fnNaN: false, unsignedZeroNaN: true)
        case .F8_E5M2FNUZ: Format(exponentBits: 5, mantissaBits: 2, bias: 16, ieeeSpecials: false, fnNaN: false, unsignedZeroNaN: true)
        default: preconditionFailure("not a signed 8-bit float")
        }
    }

    /// The value of `code` in a signed 8-bit format.
    static func value(_ code: Int, _ f: Format) -> Double {
        let sign: Double = code & 0x80 != 0 ? -1 : 1
        let exponent = (code >> f.mantissaBits) & ((1 << f.exponentBits) - 1)
        let mantissa = code & ((1 << f.mantissaBits) - 1)
        let maxExponent = (1 << f.exponentBits) - 1
        if f.unsignedZeroNaN && code == 0x80 { return .nan }
        if f.fnNaN && exponent == maxExponent && mantissa == (1 << f.mantissaBits) - 1 { return .nan }
        if f.ieeeSpecials && exponent == maxExponent { return mantissa == 0 ? sign * .infinity : .nan }
        let scale = Double(1 << f.mantissaBits)
        if exponent == 0 {
            return sign * Double(mantissa) / scale * pow2(1 - f.bias)
        }
        return sign * (1 + Double(mantissa) / scale) * pow2(exponent - f.bias)
    }

    static func pow2(_ e: Int) -> Double { Double(sign: .plus, exponent: e, significand: 1) }

    private static let tables: [DType: [Double]] = {
        var result: [DType: [Double]] = [:]
        for dtype in [DType.F8_E4M3, .F8_E5M2, .F8_E4M3FNUZ, .F8_E5M2FNUZ] {
            let f = format(dtype)
            result[dtype] = (0..<256).map { value($0, f) }
        }
        // E8M0: unsigned, exponent only: 2^(e-127); 0xFF is NaN.
        result[.F8_E8M0] = (0..<256).map { $0 == 255 ? .nan : pow2($0 - 127) }
        return result
    }()

    static func table(for dtype: DType) -> [Double] { tables[dtype]! }

    /// Round-to-nearest-even encoder for E4M3 (overflow → NaN) and E5M2 (overflow → inf).
    struct Encoder {
        /// Magnitudes of codes 0, 1, … up to the overflow code, which gets the next value the
        /// format would have (so a tie with the largest finite value rounds by code parity).
        let magnitudes: [Double]
        let nanCode: UInt8

        func encode(_ value: Double) -> UInt8 {
            if value.isNaN { return nanCode }
            let sign: UInt8 = value.sign == .minus ? 0x80 : 0
            let a = value.magnitude
            let last = magnitudes.count - 1
            if a >= magnitudes[last] { return UInt8(last) | sign }
            var lo = 0, hi = last  // magnitudes[lo] <= a < magnitudes[hi]
            while hi - lo > 1 {
                let mid = (lo + hi) / 2
                if magnitudes[mid] <= a { lo = mid } else { hi = mid }
            }
            let below = a - magnitudes[lo], above = magnitudes[hi] - a
            let code = below < above ? lo : (above < below ? hi : (lo % 2 == 0 ? lo : hi))
            return UInt8(code) | sign
        }
    }

    private static let encoders: [DType: Encoder] = {
        var result: [DType: Encoder] = [:]
        for (dtype, lastFinite, nan) in [(DType.F8_E4M3, 0x7E, UInt8(0x7F)), (.F8_E5M2, 0x7B, UInt8(0x7F))] {
            let f = format(dtype)
            var mags = (0...lastFinite).map { value($0, f) }
            mags.append(2 * mags[lastFinite] - mags[lastFinite - 1])
            result[dtype] = Encoder(magnitudes: mags, nanCode: nan)
        }
        return result
    }()

    static func encoder(for dtype: DType) -> Encoder { encoders[dtype]! }
}
