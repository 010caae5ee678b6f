import CKernels

/// A base tensor with an adapter's deltas added (`LoraAdapter`), streamed a block of rows at a
/// time: each row is decoded to float64, gets s · Σₖ L[i,k] R[k,·] for each delta (k in order, so
/// the bytes never depend on threads), and is rounded once to the tensor's dtype. The factors are
/// read when the stream starts and held as float64 for it: r·(rows + columns) values per delta.
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
        let left: [Double]
        let right: [Double]
        let rank: Int
        let scale: Double
    }

    var chunk: [UInt8] = []
    var served = 0
    private var start: TensorReader
    private let path: String
    private let dtype: DType
    private let startDType: DType
    private let factors: [Factors]
    private let rows: Int
    private let columns: Int
    private var row = 0
    private var values: [Double] = []
    private var sums: [Double] = []
    private var stored: [UInt8] = []
    /// Rows per block: about 256 KiB of float64 values.
    private let blockRows: Int

    init(_ source: LoraMergedSource) throws {
        let tensor = source.tensor
        dtype = tensor.dtype
        path = source.path
        columns = tensor.shape.count >= 2 ? tensor.shape.dropFirst().reduce(1, *) : max(tensor.elementCount, 1)
        let rows = tensor.shape.count >= 2 ? tensor.shape[0] : (tensor.elementCount == 0 ? 0 : 1), columns = columns
        self.rows = rows
        start = try TensorReader(source.patch.start)
        startDType = source.patch.start.tensor.dtype
        factors = try source.patch.deltas.map { try Self.factors(of: $0, rows: rows, columns: columns) }
        blockRows = max(1, (1 << 15) / max(columns, 1))
    }

    /// A delta's factors as L [rows, r] and R [r, columns], decoded, transposed where it says.
    private static func factors(of delta: LoraAdapter.Patch.Delta, rows: Int, columns: Int) throws -> Factors {
        func decoded(_ source: any TensorSource) throws -> [Double] {
            let bytes = try TensorReader(source).readAll()
            var values = [Double](repeating: 0, count: source.tensor.elementCount)
            bytes.withUnsafeBytes { raw in
                values.withUnsafeMutableBufferPointer { source.tensor.dtype.decode(raw.baseAddress!, count: $0.count, into: $0.baseAddress!) }
            }
            return values
        }
        func transposed(_ values: [Double], rows: Int, columns: Int) -> [Double] {
            var result = [Double](repeating: 0, count: values.count)
            for i in 0..<rows { for j in 0..<columns { result[j * rows + i] = values[i * columns + j] } }
            return result
        }
        let b = try decoded(delta.b)
        guard let aSource = delta.a else {  // a bias: L = [1], R = b
            return Factors(left: [1], right: b, rank: 1, scale: delta.scale)
        }
        let a = try decoded(aSource)
        let rank = aSource.tensor.shape[0], inner = aSource.tensor.shape[1], outer = delta.b.tensor.shape[0]
        if delta.transposed {  // (B·A)ᵀ = Aᵀ·Bᵀ: L = Aᵀ [inner, r], R = Bᵀ [r, outer]
            return Factors(left: transposed(a, rows: rank, columns: inner), right: transposed(b, rows: outer, columns: rank), rank: rank, scale: delta.scale)
        }
        return Factors(left: b, right: a, rank: rank, scale: delta.scale)
    }

    mutating func fill() throws {
        let count = min(blockRows, rows - row)
        guard count > 0 else {
            throw WSAMergeError.io(file: path, reason: "read past the end of tensor '\(start.tensor.name)'")
        }
        let elements = count * columns
        if values.count < elements { values = [Double](repeating: 0, count: elements) }
        if sums.count < columns { sums = [Double](repeating: 0, count: columns) }
        let startBytes = startDType.byteCount(elements: elements)!
        if stored.count < startBytes { stored = [UInt8](repeating: 0, count: startBytes) }
        try stored.withUnsafeMutableBytes { try start.read(into: UnsafeMutableRawBufferPointer(rebasing: $0[0..<startBytes])) }
        let (startDType, dtype, columns, firstRow, factors) = (self.startDType, self.dtype, self.columns, row, self.factors)
        stored.withUnsafeBytes { raw in values.withUnsafeMutableBufferPointer { startDType.decode(raw.baseAddress!, count: elements, into: $0.baseAddress!) } }
        values.withUnsafeMutableBufferPointer { out in
            sums.withUnsafeMutableBufferPointer { sums in
                for i in 0..<count {
                    let o = out.baseAddress! + i * columns
                    for delta in factors {
                        sums.baseAddress!.update(repeating: 0, count: columns)
                        delta.left.withUnsafeBufferPointer { left in
                            delta.right.withUnsafeBufferPointer { right in
                                for k in 0..<delta.rank {
                                    wsk_axpy(sums.baseAddress!, right.baseAddress! + k * columns, left[(firstRow + i) * delta.rank + k], columns)
                                }
                            }
                        }
                        wsk_axpy(o, sums.baseAddress!, delta.scale, columns)
                    }
                }
            }
        }
        let bytes = dtype.byteCount(elements: elements)!
        chunk = [UInt8](repeating: 0, count: bytes)
        chunk.withUnsafeMutableBytes { raw in values.withUnsafeBufferPointer { dtype.encode($0.baseAddress!, count: elements, into: raw.baseAddress!) } }
        served = 0
        row += count
    }
}
