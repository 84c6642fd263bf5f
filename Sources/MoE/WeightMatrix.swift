#if canImport(Glibc)
import Glibc
#endif

/// A weight matrix `[rows, cols]`, row-major, left in its checkpoint dtype inside the mapped file.
/// `y = x · Wᵀ` (the layout of `nn.Linear.weight`: rows are outputs, columns inputs).
public struct WeightMatrix: @unchecked Sendable {
    /// The checkpoint tensor it comes from (with `[expert]` for a slice of a fused tensor).
    public let name: String
    public let dtype: DType
    public let rows: Int
    public let cols: Int
    /// Row 0, column 0; rows are `cols` elements apart.
    public let base: UnsafeRawPointer
    let owner: AnyObject

    /// A whole 2-D tensor of a compute dtype.
    public init(_ tensor: Tensor) throws {
        try tensor.expectComputeType()
        guard tensor.shape.count == 2 else { throw tensor.error("expected a 2-D weight, shape is \(tensor.shape)") }
        self.init(name: tensor.name, dtype: tensor.dtype, rows: tensor.shape[0], cols: tensor.shape[1],
                  base: tensor.bytes.baseAddress ?? UnsafeRawPointer(bitPattern: 0x10)!, owner: tensor.owner)
    }

    /// Rows `rows` of matrix `index` of a 3-D tensor `[count, r, c]`.
    public init(_ tensor: Tensor, index: Int, rows range: Range<Int>) throws {
        try tensor.expectComputeType()
        guard tensor.shape.count == 3, index >= 0, index < tensor.shape[0], range.lowerBound >= 0, range.upperBound <= tensor.shape[1] else {
            throw tensor.error("expected a 3-D weight holding matrix \(index) rows \(range), shape is \(tensor.shape)")
        }
        let cols = tensor.shape[2]
        let offset = (index * tensor.shape[1] + range.lowerBound) * cols * tensor.dtype.byteSize
        self.init(name: "\(tensor.name)[\(index)]", dtype: tensor.dtype, rows: range.count, cols: cols,
                  base: (tensor.bytes.baseAddress ?? UnsafeRawPointer(bitPattern: 0x10)!) + offset, owner: tensor.owner)
    }

    init(name: String, dtype: DType, rows: Int, cols: Int, base: UnsafeRawPointer, owner: AnyObject) {
        self.name = name
        self.dtype = dtype
        self.rows = rows
        self.cols = cols
        self.base = base
        self.owner = owner
    }

    /// Bytes of weight data.
    public var byteCount: Int { rows * cols * dtype.byteSize }

    /// Whether `other` starts right where this matrix ends, same dtype and width: then the two can
    /// be used as one matrix of `rows + other.rows` rows.
    func isFollowed(by other: WeightMatrix) -> Bool {
        other.dtype == dtype && other.cols == cols && other.base == base + byteCount
    }

    /// The whole matrix widened to f32 (for small matrices such as the router's).
    public func floats() -> [Float] {
        [Float](unsafeUninitializedCapacity: rows * cols) { buffer, initialized in
            if rows * cols > 0 { FloatConversion.widen(dtype, from: base, to: buffer.baseAddress!, count: rows * cols) }
            initialized = rows * cols
        }
    }
}

/// One SwiGLU expert FFN: `down(act(gate(x)) * up(x))`, with `gate`/`up` `[ffn, hidden]` and
/// `down` `[hidden, ffn]`.
public struct ExpertWeights: Sendable {
    public let gate: WeightMatrix
    public let up: WeightMatrix
    public let down: WeightMatrix

    public var hidden: Int { gate.cols }
    public var ffn: Int { gate.rows }

    /// Checks the three shapes agree with each other and with `hidden`/`ffn`.
    public init(gate: WeightMatrix, up: WeightMatrix, down: WeightMatrix, hidden: Int, ffn: Int, file: String) throws {
        for (matrix, rows, cols) in [(gate, ffn, hidden), (up, ffn, hidden), (down, hidden, ffn)] where matrix.rows != rows || matrix.cols != cols {
            throw SafeTensorsError(file: file, tensor: matrix.name, "shape [\(matrix.rows), \(matrix.cols)], expected [\(rows), \(cols)]")
        }
        self.gate = gate
        self.up = up
        self.down = down
    }

    /// Bytes of weight data.
    public var byteCount: Int { gate.byteCount + up.byteCount + down.byteCount }
}

/// Weight bytes owned in memory rather than mapped from a file (benchmarks, tests, converted
/// weights). Freed when the last matrix pointing into it goes.
public final class WeightStorage: @unchecked Sendable {
    public let bytes: UnsafeMutableRawBufferPointer

    /// Allocates `byteCount` bytes, 64-byte aligned, uninitialised.
    public init(byteCount: Int) {
        bytes = .allocate(byteCount: max(byteCount, 1), alignment: 64)
    }

    /// Matrix `[rows, cols]` of `dtype` starting `offset` bytes in.
    public func matrix(name: String, dtype: DType, rows: Int, cols: Int, offset: Int = 0) -> WeightMatrix {
        precondition(dtype.isComputeType, "weights must be F32, F16 or BF16, not \(dtype.rawValue)")
        precondition(offset >= 0 && offset + rows * cols * dtype.byteSize <= bytes.count, "matrix outside its storage")
        return WeightMatrix(name: name, dtype: dtype, rows: rows, cols: cols, base: UnsafeRawPointer(bytes.baseAddress!) + offset, owner: self)
    }

    deinit { bytes.deallocate() }
}

/// Mapping a weight's pages before the first request, so that the first tokens to reach an expert
/// do not pay thousands of page faults (a 17 MB expert is ~4,300 of them, several milliseconds).
enum Prefault {
    /// `MADV_POPULATE_READ` (Linux 5.14): map the pages of a range without reading them by hand.
    static let populateRead: Int32 = 22
    static let page = Int(sysconf(Int32(_SC_PAGESIZE)))

    static func populate(_ base: UnsafeRawPointer, count: Int) {
        guard count > 0 else { return }
        let start = Int(bitPattern: base) / page * page
        let end = Int(bitPattern: base) + count
        if madvise(UnsafeMutableRawPointer(bitPattern: start), end - start, populateRead) == 0 { return }
        // Older kernels: touch one byte per page.
        var sum: UInt8 = 0
        var address = start
        while address < end {
            sum &+= UnsafeRawPointer(bitPattern: max(address, Int(bitPattern: base)))!.load(as: UInt8.self)
            address += page
        }
        withExtendedLifetime(sum) {}
    }
}

extension WeightMatrix {
    /// Maps the matrix's pages now (see `Prefault`).
    public func prefault() { Prefault.populate(base, count: byteCount) }
}

extension ExpertWeights {
    /// Maps the expert's pages now (see `Prefault`).
    public func prefault() {
        gate.prefault()
        up.prefault()
        down.prefault()
    }
}
