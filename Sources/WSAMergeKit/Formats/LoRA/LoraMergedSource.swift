import CKernels

/// A base tensor with an adapter's deltas added (`LoraAdapter`), streamed a block of rows at a
/// time: each row is decoded to float64, gets s · Σₖ L[i,k] R[k,·] for each delta (k in order, so
/// the bytes never depend on threads), and is rounded once to the tensor's dtype. The factor
/// along the rows (L) is read block by block with them; the one along the row (R, r × columns
/// values) is held while the tensor is read, so memory does not grow with the number of rows.
struct LoraMergedSource: TensorSource {
    let tensor: TensorInfo
    let patch: LoraAdapter.Patch
    let path: String

    var readsConcurrently: Bool {
        patch.start.readsConcurrently && patch.deltas.allSatisfy { ($0.a?.readsConcurrently ?? true) && $0.b.readsConcurrently }
    }

    func makeStream() throws -> any ByteStream { try LoraMergedStream(self) }
}

/// The rows of a `LoraMergedSource`, a block at a time.
struct LoraMergedStream: ChunkedStream {
    /// One delta as s · L·R over the tensor seen as [rows, columns]: L is [rows, r], R is [r, columns].
    struct Factors {
        /// Where L's rows come from.
        enum Left {
            /// B itself ([rows, r], C order): its next rows.
            case rows(TensorReader)
            /// Aᵀ, of A [r, rows]: reader k at A's row k, read along.
            case columns([TensorReader])
            /// A bias: L = [1].
            case one
        }
        let left: Left
        /// R, decoded.
        let right: [Double]
        let rank: Int
        let scale: Double
    }

    var chunk: [UInt8] = []
    var served = 0
    private let start: TensorReader
    private let path: String
    private let dtype: DType
    private let factors: [Factors]
    private let rows: Int
    private let columns: Int
    private var row = 0
    private var values: [Double] = []
    private var left: [Double] = []
    private var part: [Double] = []
    private var sums: [Double] = []
    private var stored: [UInt8] = []
    /// Rows per block: about 256 KiB of float64 values.
    private let blockRows: Int

    init(_ source: LoraMergedSource) throws {
        let tensor = source.tensor
        dtype = tensor.dtype
        path = source.path
        let columns = tensor.shape.count >= 2 ? tensor.shape.dropFirst().reduce(1, *) : max(tensor.elementCount, 1)
        let rows = tensor.shape.count >= 2 ? tensor.shape[0] : (tensor.elementCount == 0 ? 0 : 1)
        (self.rows, self.columns) = (rows, columns)
        start = try TensorReader(source.patch.start)
        factors = try source.patch.deltas.map { try Self.factors(of: $0, rows: rows) }
        blockRows = max(1, (1 << 15) / max(columns, 1))
    }

    /// A delta's factors: L read along (B, or Aᵀ from A's rows), R decoded (A, or Bᵀ).
    private static func factors(of delta: LoraAdapter.Patch.Delta, rows: Int) throws -> Factors {
        let b = delta.b
        guard let a = delta.a else { return Factors(left: .one, right: try decoded(b), rank: 1, scale: delta.scale) }
        let rank = a.tensor.shape[0]
        guard delta.transposed else { return Factors(left: .rows(try TensorReader(b)), right: try decoded(a), rank: rank, scale: delta.scale) }
        // (B·A)ᵀ = Aᵀ·Bᵀ: L = Aᵀ [rows, r], R = Bᵀ [r, columns].
        let readers = try (0..<rank).map { k in
            let reader = try TensorReader(a)
            try reader.skip(a.tensor.dtype.byteCount(elements: k * rows)!)
            return reader
        }
        let bValues = try decoded(b), outer = b.tensor.shape[0]
        var right = [Double](repeating: 0, count: bValues.count)
        for j in 0..<outer { for k in 0..<rank { right[k * outer + j] = bValues[j * rank + k] } }
        return Factors(left: .columns(readers), right: right, rank: rank, scale: delta.scale)
    }

    /// A whole (small) factor decoded.
    private static func decoded(_ source: any TensorSource) throws -> [Double] {
        let bytes = try TensorReader(source).readAll()
        var values = [Double](repeating: 0, count: source.tensor.elementCount)
        bytes.withUnsafeBytes { raw in
            values.withUnsafeMutableBufferPointer { source.tensor.dtype.decode(raw.baseAddress!, count: $0.count, into: $0.baseAddress!) }
        }
        return values
    }

    /// Reads `count` elements of `reader` into `destination`, decoded (through `stored`).
    private static func read(_ count: Int, of reader: TensorReader, into destination: inout [Double], stored: inout [UInt8]) throws {
        let kind = reader.tensor.dtype, bytes = kind.byteCount(elements: count)!
        if stored.count < bytes { stored = [UInt8](repeating: 0, count: bytes) }
        if destination.count < count { destination = [Double](repeating: 0, count: count) }
        try stored.withUnsafeMutableBytes { try reader.read(into: UnsafeMutableRawBufferPointer(rebasing: $0[0..<bytes])) }
        stored.withUnsafeBytes { raw in destination.withUnsafeMutableBufferPointer { kind.decode(raw.baseAddress!, count: count, into: $0.baseAddress!) } }
    }

    /// L's rows `row ..< row + count` of `factors`, [count, r] in `left`.
    private mutating func readLeft(_ factors: Factors, count: Int) throws {
        let rank = factors.rank
        if left.count < count * rank { left = [Double](repeating: 0, count: count * rank) }
        switch factors.left {
        case .one:
            for i in 0..<count { left[i] = 1 }
        case .rows(let reader):
            try Self.read(count * rank, of: reader, into: &left, stored: &stored)
        case .columns(let readers):
            for (k, reader) in readers.enumerated() {
                try Self.read(count, of: reader, into: &part, stored: &stored)
                for i in 0..<count { left[i * rank + k] = part[i] }
            }
        }
    }

    mutating func fill() throws {
        let count = min(blockRows, rows - row)
        guard count > 0 else {
            throw WSAMergeError.io(file: path, reason: "read past the end of tensor '\(start.tensor.name)'")
        }
        let elements = count * columns, columns = columns
        try Self.read(elements, of: start, into: &values, stored: &stored)
        if sums.count < columns { sums = [Double](repeating: 0, count: columns) }
        for delta in factors {
            try readLeft(delta, count: count)
            let rank = delta.rank
            values.withUnsafeMutableBufferPointer { out in
                sums.withUnsafeMutableBufferPointer { sums in
                    left.withUnsafeBufferPointer { left in
                        delta.right.withUnsafeBufferPointer { right in
                            for i in 0..<count {
                                sums.baseAddress!.update(repeating: 0, count: columns)
                                for k in 0..<rank {
                                    wsk_axpy(sums.baseAddress!, right.baseAddress! + k * columns, left[i * rank + k], columns)
                                }
                                wsk_axpy(out.baseAddress! + i * columns, sums.baseAddress!, delta.scale, columns)
                            }
                        }
                    }
                }
            }
        }
        chunk = [UInt8](repeating: 0, count: dtype.byteCount(elements: elements)!)
        let dtype = dtype
        chunk.withUnsafeMutableBytes { raw in values.withUnsafeBufferPointer { dtype.encode($0.baseAddress!, count: elements, into: raw.baseAddress!) } }
        served = 0
        row += count
    }
}
