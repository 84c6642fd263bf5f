// Fuzz target `safetensors`: the safetensors header parser and validator (Sources/MoE/SafeTensorsFile.swift,
// `SafeTensorsFile.init(path:)` → `parseHeader` → `parseEntry`), with the JSON parser under it.
//
// The input is a whole .safetensors file (u64 header length, JSON header, data section); the
// "mapping" is the input itself (MappedFileStub.swift). Besides crashes it checks what opening
// promises: every tensor's bytes lie inside the file, after the header, and hold exactly
// shape × dtype-size bytes; and reading every tensor (`floats()` / `integers()`) stays inside them.
import MoE

nonisolated(unsafe) var sink: Float = 0

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let input = UnsafeRawBufferPointer(start: data, count: size)
    MappedFile.fuzzInput = input
    defer { MappedFile.fuzzInput = UnsafeRawBufferPointer(start: nil, count: 0) }
    guard let file = try? SafeTensorsFile(path: "fuzz.safetensors") else { return 0 }
    var covered = 0
    for (name, info) in file.tensors {
        require(info.name == name, "tensor '\(name)' is listed as '\(info.name)'")
        let tensor: Tensor
        do { tensor = try file.tensor(name) } catch { fatalError("a listed tensor does not open: \(error)") }
        let bytes = tensor.bytes
        require(bytes.count == info.elementCount * info.dtype.byteSize, "\(name): \(bytes.count) bytes for shape \(info.shape) of \(info.dtype)")
        covered += bytes.count
        if bytes.count > 0 {
            let start = bytes.baseAddress! - UnsafeRawPointer(data)
            require(start >= 8 && start + bytes.count <= size, "\(name): bytes \(start)..<\(start + bytes.count) outside the \(size)-byte file")
        }
        if info.dtype.isComputeType {
            let floats = try! tensor.floats()
            require(floats.count == info.elementCount, "\(name): floats() gave \(floats.count) of \(info.elementCount) elements")
            sink += floats.last ?? 0
        } else if let integers = try? tensor.integers() {
            require(integers.count == info.elementCount, "\(name): integers() gave \(integers.count) of \(info.elementCount) elements")
            sink += Float(integers.last ?? 0)
        }
    }
    // Tensors tile the data section exactly (the format's rule, checked on open).
    let headerLength = Int(UInt64(littleEndian: input.loadUnaligned(as: UInt64.self)))
    require(covered == size - 8 - headerLength, "tensors cover \(covered) bytes of a \(size - 8 - headerLength)-byte data section")
    return 0
}
