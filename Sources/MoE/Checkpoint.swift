import JSON
import Foundation

/// A model directory as Hugging Face lays it out: `config.json` beside either one
/// `model.safetensors` or shards listed in `model.safetensors.index.json`.
///
/// Every shard is mapped and its header checked on open; tensor bytes are read only when a tensor
/// is used, so a process that needs a few experts touches only their pages.
public final class Checkpoint: Sendable {
    public static let singleFileName = "model.safetensors"
    public static let indexFileName = "model.safetensors.index.json"

    public let directory: String
    /// The files that make it up, by file name.
    public let files: [String: SafeTensorsFile]
    private let fileOfTensor: [String: String]
    /// `quantization_config.weight_block_size` of an FP8 checkpoint (DeepSeek-V3: 128 × 128): the
    /// block each `weight_scale_inv` entry scales. Nil when config.json names no FP8 quantization.
    public let fp8BlockSize: (rows: Int, cols: Int)?

    /// Opens the checkpoint in `directory`: the index and every shard it names (headers checked),
    /// or the single `model.safetensors`.
    public init(directory: String) throws {
        self.directory = directory
        fp8BlockSize = try Self.fp8Block(directory + "/config.json")
        let manager = FileManager.default
        let indexPath = directory + "/" + Self.indexFileName
        let singlePath = directory + "/" + Self.singleFileName
        if manager.fileExists(atPath: indexPath) {
            let weightMap = try Self.readIndex(indexPath)
            var files: [String: SafeTensorsFile] = [:]
            for fileName in Set(weightMap.values).sorted() {
                files[fileName] = try SafeTensorsFile(path: directory + "/" + fileName)
            }
            for (tensor, fileName) in weightMap where files[fileName]?.tensors[tensor] == nil {
                throw SafeTensorsError(file: indexPath, tensor: tensor, "the index places it in \(fileName), which does not hold it")
            }
            self.files = files
            fileOfTensor = weightMap
        } else if manager.fileExists(atPath: singlePath) {
            let file = try SafeTensorsFile(path: singlePath)
            files = [Self.singleFileName: file]
            fileOfTensor = file.tensors.mapValues { _ in Self.singleFileName }
        } else {
            throw SafeTensorsError(file: directory, "no \(Self.singleFileName) or \(Self.indexFileName) in this directory")
        }
    }

    static func fp8Block(_ configPath: String) throws -> (rows: Int, cols: Int)? {
        guard let data = FileManager.default.contents(atPath: configPath), let config = try? JSONValue.parse(data),
              let quantization = config["quantization_config"], !quantization.isNull else { return nil }
        guard quantization["quant_method"]?.string == "fp8" else {
            throw SafeTensorsError(file: configPath, "quantization_config.quant_method \(quantization["quant_method"]?.compact ?? "missing") is not supported (fp8)")
        }
        if let fmt = quantization["fmt"]?.string, fmt != "e4m3" {
            throw SafeTensorsError(file: configPath, "quantization_config.fmt \(fmt) is not supported (e4m3)")
        }
        guard let size = quantization["weight_block_size"]?.array?.compactMap(\.int) else { return (128, 128) }
        guard size.count == 2, size.allSatisfy({ $0 >= 1 && $0 <= 1 << 16 }) else {
            throw SafeTensorsError(file: configPath, "quantization_config.weight_block_size must be two positive sizes")
        }
        return (size[0], size[1])
    }

    /// Every tensor name, sorted.
    public var tensorNames: [String] { fileOfTensor.keys.sorted() }

    /// Whether the checkpoint holds a tensor of that name.
    public func contains(_ name: String) -> Bool { fileOfTensor[name] != nil }

    /// The header entry of a tensor, or nil.
    public func info(_ name: String) -> TensorInfo? {
        fileOfTensor[name].flatMap { files[$0]?.tensors[name] }
    }

    /// The named tensor (no copy); the error names the tensor and the checkpoint. An F8_E4M3
    /// weight of an FP8 checkpoint comes dequantized to f32 (`fp8 × weight_scale_inv` per block, the
    /// f32 product transformers' reference computes): the kernels have no FP8 path, and f32 keeps
    /// the values exact where bf16 would round the products (memory: 4 bytes a weight instead of 1).
    public func tensor(_ name: String) throws -> Tensor {
        guard let fileName = fileOfTensor[name], let file = files[fileName] else {
            throw SafeTensorsError(file: directory, tensor: name, "not in this checkpoint")
        }
        let tensor = try file.tensor(name)
        guard tensor.dtype == .f8e4m3 else { return tensor }
        guard let block = fp8BlockSize else {
            throw tensor.error("F8_E4M3 weights need config.json's quantization_config (quant_method fp8, weight_block_size)")
        }
        let scaleName = name + "_scale_inv"
        guard let scaleFile = fileOfTensor[scaleName].flatMap({ files[$0] }) else {
            throw tensor.error("an F8_E4M3 weight without its \(scaleName)")
        }
        return try FP8Blocks.dequantize(tensor, scales: try scaleFile.tensor(scaleName), block: block)
    }

    /// The weight files of a checkpoint directory (`model*.safetensors` and the index), by name.
    public static func weightFiles(in directory: String) -> [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        return names.filter { $0 == indexFileName || ($0.hasPrefix("model") && $0.hasSuffix(".safetensors")) }.sorted()
    }

    /// Total bytes of tensor data.
    public var totalBytes: Int {
        fileOfTensor.keys.reduce(0) { $0 + (info($1)?.dataOffsets.count ?? 0) }
    }

    private static func readIndex(_ path: String) throws -> [String: String] {
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: path)) } catch {
            throw SafeTensorsError(file: path, "cannot read: \(error.localizedDescription)")
        }
        guard let object = (try? JSONValue.parse(data))?.object else {
            throw SafeTensorsError(file: path, "not a JSON object")
        }
        guard let map = object["weight_map"]?.object else {
            throw SafeTensorsError(file: path, "missing object 'weight_map'")
        }
        var weightMap: [String: String] = [:]
        for (tensor, value) in map {
            guard let fileName = value.string, !fileName.isEmpty, !fileName.contains("/"), fileName != "..", fileName != "." else {
                throw SafeTensorsError(file: path, tensor: tensor, "weight_map entry is not a file name in this directory")
            }
            weightMap[tensor] = fileName
        }
        return weightMap
    }
}
