/// A tensor element type, named by its safetensors code (case-sensitive).
public enum DType: String, CaseIterable, Sendable, Codable {
    case BOOL, U8, I8, U16, I16, U32, I32, U64, I64
    case F16, BF16, F32, F64
    case F8_E4M3, F8_E5M2, F8_E8M0, F8_E4M3FNUZ, F8_E5M2FNUZ
    case F4, F6_E2M3, F6_E3M2
    case C64

    /// Bits per element (sub-byte types pack several elements per byte).
    public var bitWidth: Int {
        switch self {
        case .F4: 4
        case .F6_E2M3, .F6_E3M2: 6
        case .BOOL, .U8, .I8, .F8_E4M3, .F8_E5M2, .F8_E8M0, .F8_E4M3FNUZ, .F8_E5M2FNUZ: 8
        case .U16, .I16, .F16, .BF16: 16
        case .U32, .I32, .F32: 32
        case .U64, .I64, .F64, .C64: 64
        }
    }

    /// Bytes per element, or `nil` for the sub-byte types.
    public var byteWidth: Int? { bitWidth % 8 == 0 ? bitWidth / 8 : nil }

    /// Floating-point types (the ones merging works on).
    public var isFloat: Bool {
        switch self {
        case .F16, .BF16, .F32, .F64, .F8_E4M3, .F8_E5M2, .F8_E8M0, .F8_E4M3FNUZ, .F8_E5M2FNUZ,
             .F4, .F6_E2M3, .F6_E3M2:
            true
        default:
            false
        }
    }

    /// Whether elements can be decoded to `Double` (every whole-byte real type).
    public var isDecodable: Bool { byteWidth != nil && self != .C64 }

    /// Why this type cannot be decoded, or `nil` when it can.
    public var undecodableReason: String? {
        if isDecodable { return nil }
        if self == .C64 { return "complex dtype C64 is not decoded" }
        return "sub-byte dtype \(rawValue) is not decoded"
    }

    /// Whether float64 values can be encoded back to this type (for `convert --dtype` and `fuse`).
    public var isEncodable: Bool {
        switch self {
        case .F64, .F32, .F16, .BF16, .F8_E4M3, .F8_E5M2: true
        default: false
        }
    }

    /// The dtypes `--dtype` accepts as a conversion or merge target.
    public static let targets: [DType] = [.F64, .F32, .F16, .BF16]

    /// Byte size of `count` elements, or `nil` when it overflows or is not a whole number of bytes.
    public func byteCount(elements count: Int) -> Int? {
        let (bits, overflow) = count.multipliedReportingOverflow(by: bitWidth)
        guard !overflow, bits % 8 == 0 else { return nil }
        return bits / 8
    }
}

/// Number of elements of `shape`, or `nil` on a negative dimension or overflow.
public func elementCount(of shape: [Int]) -> Int? {
    var total = 1
    for dim in shape {
        guard dim >= 0 else { return nil }
        let (product, overflow) = total.multipliedReportingOverflow(by: dim)
        guard !overflow else { return nil }
        total = product
    }
    return total
}
