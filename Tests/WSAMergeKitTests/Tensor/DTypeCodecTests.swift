import CKernels
import Testing
@testable import WSAMergeKit

/// Decoding every dtype to float64 and encoding back with round-to-nearest, ties to even.
@Suite struct DTypeCodecTests {
    /// Decodes `bytes` as `dtype`, from an odd address so unaligned loads are exercised.
    func decode(_ dtype: DType, _ bytes: [UInt8]) -> [Double] {
        let count = bytes.count / dtype.byteWidth!
        var values = [Double](repeating: -12345, count: count)
        let padded = [0xEE] + bytes
        padded.withUnsafeBytes { raw in
            values.withUnsafeMutableBufferPointer { out in dtype.decode(raw.baseAddress! + 1, count: count, into: out.baseAddress!) }
        }
        return values
    }

    func encode(_ dtype: DType, _ values: [Double]) -> [UInt8] {
        var bytes = [UInt8](repeating: 0xEE, count: values.count * dtype.byteWidth! + 1)
        bytes.withUnsafeMutableBytes { raw in
            values.withUnsafeBufferPointer { dtype.encode($0.baseAddress!, count: values.count, into: raw.baseAddress! + 1) }
        }
        #expect(bytes[0] == 0xEE, "encode wrote before its destination")
        return Array(bytes.dropFirst())
    }

    /// `a` and `b` are the same doubles, NaN equal to NaN and -0 distinct from +0.
    func same(_ a: [Double], _ b: [Double]) -> Bool {
        a.count == b.count && zip(a, b).allSatisfy { $0.isNaN ? $1.isNaN : $0.bitPattern == $1.bitPattern }
    }

    @Test func decodesIntegersAndBool() {
        #expect(decode(.BOOL, [0, 1, 2, 255]) == [0, 1, 1, 1])
        #expect(decode(.U8, [0, 1, 255]) == [0, 1, 255])
        #expect(decode(.I8, [0x80, 0x7F, 0xFF, 0]) == [-128, 127, -1, 0])
        #expect(decode(.U16, Bytes.le(UInt16.max) + Bytes.le(UInt16(258))) == [65535, 258])
        #expect(decode(.I16, Bytes.le(Int16.min) + Bytes.le(Int16(-2))) == [-32768, -2])
        #expect(decode(.U32, Bytes.le(UInt32.max)) == [4_294_967_295])
        #expect(decode(.I32, Bytes.le(Int32.min) + Bytes.le(Int32.max)) == [-2_147_483_648, 2_147_483_647])
        // 64-bit integers round to the nearest double.
        #expect(decode(.U64, Bytes.le(UInt64.max) + Bytes.le(UInt64(1) << 53 + 1)) == [0x1p64, 0x1p53])
        #expect(decode(.I64, Bytes.le(Int64.min) + Bytes.le(Int64.max) + Bytes.le(Int64(-3))) == [-0x1p63, 0x1p63, -3])
    }

    @Test func decodesWideFloats() {
        #expect(same(decode(.F64, Bytes.le(0.1) + Bytes.le(-0.0) + Bytes.le(Double.leastNonzeroMagnitude) + Bytes.le(Double.nan)),
                     [0.1, -0.0, .leastNonzeroMagnitude, .nan]))
        #expect(same(decode(.F32, Bytes.le(Float(0.1)) + Bytes.le(Float.leastNonzeroMagnitude) + Bytes.le(-Float.infinity)),
                     [Double(Float(0.1)), 0x1p-149, -.infinity]))
        let f16: [UInt16] = [0x3C00, 0x0001, 0x03FF, 0x7BFF, 0x7C00, 0xFC00, 0x8000, 0x7E00, 0xC000]
        #expect(same(decode(.F16, f16.flatMap(Bytes.le)),
                     [1, 0x1p-24, 1023 * 0x1p-24, 65504, .infinity, -.infinity, -0.0, .nan, -2]))
        let bf16: [UInt16] = [0x3F80, 0x0001, 0x7F7F, 0x7F80, 0xFF80, 0x7FC0, 0x8000, 0x3DCD, 0xC049]
        #expect(same(decode(.BF16, bf16.flatMap(Bytes.le)),
                     [1, 0x1p-133, 0x1.FEp127, .infinity, -.infinity, .nan, -0.0, 0.10009765625, -3.140625]))
    }

    @Test func decodesEightBitFloatsWithMlDtypesSemantics() {
        // float8_e4m3fn: bias 7, no infinities, S.1111.111 is NaN, max 448.
        #expect(same(decode(.F8_E4M3, [0x00, 0x80, 0x01, 0x08, 0x38, 0x78, 0x7E, 0x7F, 0xFF, 0xFE, 0x3A]),
                     [0, -0.0, 0x1p-9, 0x1p-6, 1, 256, 448, .nan, .nan, -448, 1.25]))
        // float8_e5m2: IEEE-like, bias 15, max 57344.
        #expect(same(decode(.F8_E5M2, [0x00, 0x01, 0x04, 0x3C, 0x7B, 0x7C, 0xFC, 0x7D, 0x7E, 0x7F, 0xBD]),
                     [0, 0x1p-16, 0x1p-14, 1, 57344, .infinity, -.infinity, .nan, .nan, .nan, -1.25]))
        // fnuz: bias 8 / 16, 0x80 is the only NaN, no negative zero, no infinities.
        #expect(same(decode(.F8_E4M3FNUZ, [0x00, 0x80, 0x01, 0x40, 0x7F, 0xFF]), [0, .nan, 0x1p-10, 1, 240, -240]))
        #expect(same(decode(.F8_E5M2FNUZ, [0x00, 0x80, 0x01, 0x40, 0x7C, 0x7F, 0xFF]), [0, .nan, 0x1p-17, 1, 32768, 57344, -57344]))
        // float8_e8m0fnu: unsigned powers of two 2^(e-127), 0xFF is NaN.
        #expect(same(decode(.F8_E8M0, [0, 1, 127, 128, 254, 255]), [0x1p-127, 0x1p-126, 1, 2, 0x1p127, .nan]))
    }

    @Test func everyDecodableTypeDecodesAndTheOthersDoNot() {
        for dtype in DType.allCases {
            switch dtype {
            case .F4, .F6_E2M3, .F6_E3M2, .C64:
                #expect(!dtype.isDecodable)
                #expect(dtype.undecodableReason?.contains(dtype.rawValue) == true)
            default:
                #expect(dtype.isDecodable, "\(dtype)")
                #expect(dtype.undecodableReason == nil)
                let zero = dtype == .F8_E8M0 ? 0x1p-127 : 0  // E8M0 has no zero: code 0 is 2^-127
                #expect(decode(dtype, [UInt8](repeating: 0, count: dtype.byteWidth! * 3)) == [zero, zero, zero], "\(dtype)")
            }
        }
        #expect(Set(DType.allCases.filter(\.isEncodable)) == [.F64, .F32, .F16, .BF16, .F8_E4M3, .F8_E5M2])
    }

    /// Doubles, then the bits numpy/ml_dtypes-style single rounding gives for F32, F16, BF16,
    /// F8_E4M3 and F8_E5M2 (computed exactly in Python with fractions and cross-checked against
    /// numpy for F16/F32 and against ml_dtypes for inputs exactly representable in float32;
    /// ml_dtypes itself rounds float64 through float32, which double-rounds ties such as
    /// 1 + 2⁻⁸ + 2⁻³⁰).
    static let roundings: [(UInt64, UInt32, UInt16, UInt16, UInt8, UInt8)] = [
        (0x0000000000000000, 0x00000000, 0x0000, 0x0000, 0x00, 0x00),  // 0.0
        (0x8000000000000000, 0x80000000, 0x8000, 0x8000, 0x80, 0x80),  // -0.0
        (0x3ff0000000000000, 0x3f800000, 0x3c00, 0x3f80, 0x38, 0x3c),  // 1.0
        (0xbff0000000000000, 0xbf800000, 0xbc00, 0xbf80, 0xb8, 0xbc),  // -1.0
        (0x3fb999999999999a, 0x3dcccccd, 0x2e66, 0x3dcd, 0x1d, 0x2e),  // 0.1
        (0xbfb999999999999a, 0xbdcccccd, 0xae66, 0xbdcd, 0x9d, 0xae),  // -0.1
        (0x3fd5555555555555, 0x3eaaaaab, 0x3555, 0x3eab, 0x2b, 0x35),  // 0.3333333333333333
        (0x400921fb54442d18, 0x40490fdb, 0x4248, 0x4049, 0x45, 0x42),  // 3.141592653589793
        (0x3f50624dd2f1a9fc, 0x3a83126f, 0x1419, 0x3a83, 0x01, 0x14),  // 0.001
        (0x40effc0000000000, 0x477fe000, 0x7bff, 0x4780, 0x7f, 0x7c),  // 65504.0
        (0x40effdffae147ae1, 0x477feffd, 0x7bff, 0x4780, 0x7f, 0x7c),  // 65519.99
        (0x40effe0000000000, 0x477ff000, 0x7c00, 0x4780, 0x7f, 0x7c),  // 65520.0
        (0x40f86a0000000000, 0x47c35000, 0x7c00, 0x47c3, 0x7f, 0x7c),  // 100000.0
        (0x407c000000000000, 0x43e00000, 0x5f00, 0x43e0, 0x7e, 0x5f),  // 448.0
        (0x407d000000000000, 0x43e80000, 0x5f40, 0x43e8, 0x7e, 0x5f),  // 464.0
        (0x407d0000001ad7f3, 0x43e80000, 0x5f40, 0x43e8, 0x7f, 0x5f),  // 464.0000001
        (0x407dfe6666666666, 0x43eff333, 0x5f80, 0x43f0, 0x7f, 0x5f),  // 479.9
        (0x407e000000000000, 0x43f00000, 0x5f80, 0x43f0, 0x7f, 0x60),  // 480.0
        (0x40ec000000000000, 0x47600000, 0x7b00, 0x4760, 0x7f, 0x7b),  // 57344.0
        (0x40edffffae147ae1, 0x476ffffd, 0x7b80, 0x4770, 0x7f, 0x7b),  // 61439.99
        (0x40ee000000000000, 0x47700000, 0x7b80, 0x4770, 0x7f, 0x7c),  // 61440.0
        (0x47efe00000000000, 0x7f7f0000, 0x7c00, 0x7f7f, 0x7f, 0x7c),  // 3.3895313892515355e+38
        (0x47efefffffffff61, 0x7f7f8000, 0x7c00, 0x7f7f, 0x7f, 0x7c),  // 3.3961775292304e+38
        (0x47effffff0000000, 0x7f800000, 0x7c00, 0x7f80, 0x7f, 0x7c),  // 3.4028235677973366e+38
        (0x48078287f49c4a1d, 0x7f800000, 0x7c00, 0x7f80, 0x7f, 0x7c),  // 1e+39
        (0x358dee7a4ad4b81f, 0x00000000, 0x0000, 0x0000, 0x00, 0x00),  // 1e-50
        (0xb58dee7a4ad4b81f, 0x80000000, 0x8000, 0x8000, 0x80, 0x80),  // -1e-50
        (0x3e70000000000000, 0x33800000, 0x0001, 0x3380, 0x00, 0x00),  // 5.960464477539063e-08
        (0x3e60000000000000, 0x33000000, 0x0000, 0x3300, 0x00, 0x00),  // 2.9802322387695312e-08
        (0x3e60000000001000, 0x33000000, 0x0001, 0x3300, 0x00, 0x00),  // 2.980232238772242e-08
        (0x37a16c262777579c, 0x000116c2, 0x0000, 0x0001, 0x00, 0x00),  // 1e-40
        (0x37a0000000000000, 0x00010000, 0x0000, 0x0001, 0x00, 0x00),  // 9.183549615799121e-41
        (0x3f60000000000000, 0x3b000000, 0x1800, 0x3b00, 0x01, 0x18),  // 0.001953125
        (0x3f50000000000000, 0x3a800000, 0x1400, 0x3a80, 0x00, 0x14),  // 0.0009765625
        (0x3f98000000000000, 0x3cc00000, 0x2600, 0x3cc0, 0x0c, 0x26),  // 0.0234375
        (0x3f60000000000000, 0x3b000000, 0x1800, 0x3b00, 0x01, 0x18),  // 0.001953125
        (0x3f58000000000000, 0x3ac00000, 0x1600, 0x3ac0, 0x01, 0x16),  // 0.00146484375
        (0x3ff0100000000000, 0x3f808000, 0x3c04, 0x3f80, 0x38, 0x3c),  // 1.00390625
        (0x3ff0300000000000, 0x3f818000, 0x3c0c, 0x3f82, 0x38, 0x3c),  // 1.01171875
        (0x3ff0100000400000, 0x3f808000, 0x3c04, 0x3f81, 0x38, 0x3c),  // 1.0039062509313226
        (0x3ff00ffffffff000, 0x3f808000, 0x3c04, 0x3f80, 0x38, 0x3c),  // 1.0039062499990905
        (0x3ff0020000000000, 0x3f801000, 0x3c00, 0x3f80, 0x38, 0x3c),  // 1.00048828125
        (0x3ff0060000000000, 0x3f803000, 0x3c02, 0x3f80, 0x38, 0x3c),  // 1.00146484375
        (0x3ff0020000001000, 0x3f801000, 0x3c01, 0x3f80, 0x38, 0x3c),  // 1.0004882812509095
        (0x3ff1000000000000, 0x3f880000, 0x3c40, 0x3f88, 0x38, 0x3c),  // 1.0625
        (0x3ff3000000000000, 0x3f980000, 0x3cc0, 0x3f98, 0x3a, 0x3d),  // 1.1875
        (0x3ff1000000001000, 0x3f880000, 0x3c40, 0x3f88, 0x39, 0x3c),  // 1.0625000000009095
        (0x3ff2000000000000, 0x3f900000, 0x3c80, 0x3f90, 0x39, 0x3c),  // 1.125
        (0x3ff2000000001000, 0x3f900000, 0x3c80, 0x3f90, 0x39, 0x3d),  // 1.1250000000009095
        (0x3ff6000000000000, 0x3fb00000, 0x3d80, 0x3fb0, 0x3b, 0x3e),  // 1.375
        (0x3ff0000010000000, 0x3f800000, 0x3c00, 0x3f80, 0x38, 0x3c),  // 1.0000000596046448
        (0x3ff0000010000004, 0x3f800001, 0x3c00, 0x3f80, 0x38, 0x3c),  // 1.0000000596046457
        (0x3ff0000030000000, 0x3f800002, 0x3c00, 0x3f80, 0x38, 0x3c),  // 1.0000001788139343
        (0xbff0100000400000, 0xbf808000, 0xbc04, 0xbf81, 0xb8, 0xbc),  // -1.0039062509313226
        (0x40fe240c9fbe76c9, 0x47f12065, 0x7c00, 0x47f1, 0x7f, 0x7c),  // 123456.789
        (0xc0f81cd6e9e1b08a, 0xc7c0e6b7, 0xfc00, 0xc7c1, 0xff, 0xfc),  // -98765.4321
        (0x4202a05f20000000, 0x501502f9, 0x7c00, 0x5015, 0x7f, 0x7c),  // 10000000000.0
        (0xbddb7cdfd9d7bdbb, 0xaedbe6ff, 0x8000, 0xaedc, 0x80, 0x80),  // -1e-10
        (0x7ff0000000000000, 0x7f800000, 0x7c00, 0x7f80, 0x7f, 0x7c),  // inf
        (0xfff0000000000000, 0xff800000, 0xfc00, 0xff80, 0xff, 0xfc),  // -inf
    ]

    @Test func encodesToNearestTiesToEven() {
        let inputs = Self.roundings.map { Double(bitPattern: $0.0) }
        func words<T: FixedWidthInteger>(_ bytes: [UInt8], _: T.Type) -> [T] {
            stride(from: 0, to: bytes.count, by: MemoryLayout<T>.size).map { i in
                bytes[i..<i + MemoryLayout<T>.size].reversed().reduce(T(0)) { $0 << 8 | T($1) }
            }
        }
        let f32 = words(encode(.F32, inputs), UInt32.self)
        let f16 = words(encode(.F16, inputs), UInt16.self)
        let bf16 = words(encode(.BF16, inputs), UInt16.self)
        let e4m3 = encode(.F8_E4M3, inputs)
        let e5m2 = encode(.F8_E5M2, inputs)
        for (i, row) in Self.roundings.enumerated() {
            let x = inputs[i]
            #expect(f32[i] == row.1, "F32 of \(x)")
            #expect(f16[i] == row.2, "F16 of \(x)")
            #expect(bf16[i] == row.3, "BF16 of \(x)")
            #expect(e4m3[i] == row.4, "F8_E4M3 of \(x)")
            #expect(e5m2[i] == row.5, "F8_E5M2 of \(x)")
        }
        #expect(same(decode(.F64, encode(.F64, inputs)), inputs))
    }

    @Test func encodesNaNAsNaN() {
        for dtype in [DType.F32, .F16, .BF16, .F8_E4M3, .F8_E5M2] {
            let values = decode(dtype, encode(dtype, [.nan, -.nan]))
            #expect(values.allSatisfy { $0.isNaN }, "\(dtype)")
        }
        #expect(encode(.BF16, [.nan]) == [0xC0, 0x7F])
    }

    /// Every value of a narrow type survives decode → encode unchanged.
    @Test(arguments: [DType.F16, .BF16, .F8_E4M3, .F8_E5M2])
    func everyCodeRoundTrips(dtype: DType) {
        let width = dtype.byteWidth!
        let codes = (0..<(1 << (8 * width))).flatMap { code in (0..<width).map { UInt8(truncatingIfNeeded: code >> (8 * $0)) } }
        let values = decode(dtype, codes)
        let again = encode(dtype, values)
        for i in values.indices where !values[i].isNaN {
            if Array(again[i * width..<(i + 1) * width]) != Array(codes[i * width..<(i + 1) * width]) {
                Issue.record("\(dtype) code \(i) (\(values[i])) re-encodes differently")
                return
            }
        }
    }

    /// Halfway between two neighbours goes to the even one, just off halfway to the nearer one.
    @Test func tiesAndNearTiesInBF16() {
        let one = 1.0, step = 0x1p-7
        #expect(encode(.BF16, [one + step / 2]) == [0x80, 0x3F])           // tie → even 0x3F80
        #expect(encode(.BF16, [one + 3 * step / 2]) == [0x82, 0x3F])       // tie → even 0x3F82
        #expect(encode(.BF16, [one + step / 2 + 0x1p-40]) == [0x81, 0x3F]) // above the tie, below float32 resolution
        #expect(encode(.BF16, [one + step / 2 - 0x1p-40]) == [0x80, 0x3F])
        #expect(encode(.F16, [1 + 0x1p-11 + 0x1p-40]) == [0x01, 0x3C])
    }

    /// Every F16 bit pattern decodes to what Swift's `Float16` gives (NaNs to a NaN of the same
    /// sign), at the kernel's vector lanes and its scalar tail.
    @Test func decodesEveryF16Pattern() {
        let patterns = (0...UInt16.max).map { $0 }
        var out = [Double](repeating: 0, count: patterns.count)
        out.withUnsafeMutableBufferPointer { out in
            wsk_decode_f16(patterns, patterns.count - 3, out.baseAddress!)  // the last 3 through the scalar tail
            wsk_decode_f16(Array(patterns.suffix(3)), 3, out.baseAddress! + patterns.count - 3)
        }
        let wrong = patterns.indices.filter { i in
            let want = Double(Float16(bitPattern: patterns[i]))
            return want.isNaN ? !(out[i].isNaN && out[i].sign == want.sign) : out[i].bitPattern != want.bitPattern
        }
        #expect(wrong.isEmpty, "first wrong pattern: \(wrong.first.map { String(patterns[$0], radix: 16) } ?? "")")
    }

    /// The nearest F16 to `x`, ties to even, by comparing x with its two neighbours exactly
    /// (a reference independent of any conversion instruction); nil beyond the largest finite.
    func nearestF16(_ x: Double) -> UInt16? {
        guard x.isFinite, x.magnitude < 65520 else { return nil }
        let magnitude = x.magnitude
        // Largest half ≤ |x| by bisection over the ordered positive patterns 0...0x7BFF.
        var lo: UInt16 = 0, hi: UInt16 = 0x7BFF
        while lo < hi {
            let mid = (lo + hi + 1) / 2
            if Double(Float16(bitPattern: mid)) <= magnitude { lo = mid } else { hi = mid - 1 }
        }
        var pick = lo
        if lo < 0x7C00, Double(Float16(bitPattern: lo)) != magnitude {
            let below = Double(Float16(bitPattern: lo)), above = lo == 0x7BFF ? 65536.0 : Double(Float16(bitPattern: lo + 1))
            let up = above - magnitude, down = magnitude - below  // exact: neighbours of magnitude
            if up < down || (up == down && lo & 1 == 1) { pick = lo + 1 }
        }
        return (x.sign == .minus ? 0x8000 : 0) | pick
    }

    /// The fast F16 encoder (a call of 11 elements: 8 vector lanes and a scalar tail) gives the
    /// nearest F16 wherever it does not flag the call, also for subnormal results; it flags
    /// exactly the calls with an overflowing, infinite or NaN result; and the encoder `DType.F16`
    /// uses (with its careful fallback) agrees with the reference everywhere.
    @Test func fastF16KernelRoundsToNearestEven() {
        var rng = SplitMix(seed: 16)
        var values: [Double] = [0, -0.0, 0x1p-24, 0x1p-25, 0x1p-25 + 0x1p-80, 0x1.8p-24, 0x1p-14, 0x1p-14 - 0x1p-26,
                                0x1p-14 - 0x1p-25, 0x1.FFCp-15, 65504, 65519.99, 65520, -65520, 1e-300, 1e300, .infinity, .nan]
        for _ in 0..<60_000 {
            // A half, moved to its upper tie, then a few double ulps either way: normals and subnormals.
            let h = UInt16(rng.next() % 0x7BFF)
            let a = Double(Float16(bitPattern: h)), b = Double(Float16(bitPattern: h + 1))
            let tie = (a + b) / 2
            let nudge = Int64(rng.next() % 7) - 3
            let v = Double(bitPattern: UInt64(bitPattern: Int64(bitPattern: tie.bitPattern) &+ nudge))
            values.append(rng.next() & 1 == 0 ? v : -v)
            values.append(Double(sign: .plus, exponent: Int(rng.next() % 60) - 40, significand: 1 + Double(rng.next() >> 11) * 0x1p-53))
        }
        values.shuffle(using: &rng)
        var fastCalls = 0
        var out = [UInt16](repeating: 0, count: 11), viaDType = [UInt8](repeating: 0, count: 22)
        for start in stride(from: 0, to: values.count - 11, by: 11) {
            let chunk = Array(values[start..<start + 11])
            let reference = chunk.map(nearestF16)
            let flagged = wsk_encode_f16(chunk, 11, &out) != 0
            #expect(flagged == reference.contains(nil), "\(chunk)")
            if !flagged {
                fastCalls += 1
                #expect(out == reference.map { $0! }, "\(chunk)")
            }
            chunk.withUnsafeBufferPointer { DType.F16.encode($0.baseAddress!, count: 11, into: &viaDType) }
            let words = (0..<11).map { UInt16(viaDType[2 * $0]) | UInt16(viaDType[2 * $0 + 1]) << 8 }
            for (k, want) in reference.enumerated() {
                if let want { #expect(words[k] == want, "\(chunk[k])") }
                else { #expect(Float16(bitPattern: words[k]).isInfinite || Float16(bitPattern: words[k]).isNaN, "\(chunk[k])") }
            }
        }
        #expect(fastCalls > values.count / 11 / 2)
    }

    /// The vectorised BF16 kernel gives the careful encoder's bits for every kind of double —
    /// zeros of both signs, ties and near-ties at every exponent, the subnormal and overflow
    /// edges, random bit patterns — and flags a call exactly when some result needs the careful
    /// encoder (subnormal, infinite or NaN). Calls of 11 elements run 8 vector lanes and a scalar
    /// tail.
    @Test func fastBF16KernelAgreesWithTheCarefulEncoder() {
        var rng = SplitMix(seed: 7)
        var values: [Double] = [0, -0.0, 0x1p-126, -0x1p-126, 0x1p-126 - 0x1p-135, 0x1p-127 + 0x1p-134, 0x1p-133, 0x1p-134,
                                0x1p-134 + 0x1p-160, 0x1p-150, 0x1p-149, 0x1.FEp127, 0x1.FFp127 - 0x1p80, 0x1.FFp127, .infinity]
        for _ in 0..<100_000 {
            // A BF16 value moved to its upper tie, then a few double ulps either way.
            let exponent = Int(rng.next() % 280) - 140
            let significand = 1 + Double(rng.next() % 128) / 128
            let tie = Double(sign: rng.next() & 1 == 0 ? .plus : .minus, exponent: exponent, significand: significand + 1.0 / 256)
            let nudge = Int64(rng.next() % 9) - 4
            values.append(Double(bitPattern: UInt64(bitPattern: Int64(bitPattern: tie.bitPattern) &+ nudge)))
            values.append(rng.next() % 16 == 0 ? Double(bitPattern: rng.next()) : -0.0)
        }
        values.shuffle(using: &rng)
        var fastCalls = 0
        var out = [UInt16](repeating: 0, count: 11)
        for start in stride(from: 0, to: values.count - 11, by: 11) {
            let chunk = Array(values[start..<start + 11])
            let careful = chunk.map(bfloat16Bits)
            let flagged = wsk_encode_bf16(chunk, 11, &out) != 0
            // Flagged: some value is NaN, infinite, overflows BF16 or has a subnormal float; the
            // flag may also go up at the edges of those ranges, never elsewhere.
            let mustFlag = chunk.contains { v in
                !v.isFinite || v.magnitude >= 0x1.FFp127 || (v.magnitude >= 0x1p-149 && v.magnitude <= 0x1p-127)
            }
            let mayFlag = mustFlag || chunk.contains { v in v.magnitude >= 0x1p-151 && v.magnitude <= 0x1p-126 }
            guard flagged ? mayFlag : !mustFlag && out == careful else {
                Issue.record("\(chunk): flagged \(flagged), got \(out), want \(careful)")
                return
            }
            if !flagged { fastCalls += 1 }
        }
        #expect(fastCalls > values.count / 11 / 3)
    }

}

@Suite struct DTypeSizeTests {
    @Test func byteCounts() {
        #expect(DType.F32.byteCount(elements: 3) == 12)
        #expect(DType.F4.byteCount(elements: 2) == 1)
        #expect(DType.F4.byteCount(elements: 3) == nil)  // not a whole number of bytes
        #expect(DType.F6_E2M3.byteCount(elements: 4) == 3)
        #expect(DType.F64.byteCount(elements: Int.max / 4) == nil)  // overflows
        #expect(DType.BOOL.byteWidth == 1 && DType.F6_E3M2.byteWidth == nil && DType.C64.byteWidth == 8)
    }

    @Test func elementCounts() {
        #expect(elementCount(of: []) == 1)
        #expect(elementCount(of: [0, Int.max]) == 0)
        #expect(elementCount(of: [3, 4, 5]) == 60)
        #expect(elementCount(of: [1 << 32, 1 << 32]) == nil)
        #expect(elementCount(of: [2, -1]) == nil)
    }

    @Test func tensorInfoRefusesOverflowingShapes() throws {
        #expect(try TensorInfo(name: "t", dtype: .BF16, shape: [2, 3], file: "f").byteCount == 12)
        expectMalformed("'t'", "overflows") { _ = try TensorInfo(name: "t", dtype: .F32, shape: [1 << 31, 1 << 31], file: "f") }
        expectMalformed("'t'") { _ = try TensorInfo(name: "t", dtype: .F64, shape: [1 << 62], file: "f") }
        expectMalformed("'t'", "whole number of bytes") { _ = try TensorInfo(name: "t", dtype: .F4, shape: [3], file: "f") }
    }
}
