import Foundation
import Testing
@testable import MoE

@Suite("Checkpoint layout, model init and expert naming")
struct CheckpointLayoutTests {
    static let architectures = ["mixtral", "qwen2-moe", "qwen3-moe", "olmoe", "deepseek-v2", "deepseek-v3"]

    @Test("The layout for a config names and shapes every tensor exactly as transformers saved it", arguments: architectures)
    func layoutMatchesTransformers(fixture: String) throws {
        let directory = fixturesDirectory + "/" + fixture
        let config = try ModelConfig.load(directory: directory)
        let checkpoint = try Checkpoint(directory: directory)
        let layout = CheckpointLayout.entries(for: config, dtype: .f32)
        let expected = Dictionary(uniqueKeysWithValues: checkpoint.tensorNames.map { ($0, checkpoint.info($0)!.shape) })
        let ours = Dictionary(uniqueKeysWithValues: layout.map { ($0.name, $0.shape) })
        #expect(Set(ours.keys).subtracting(expected.keys).sorted() == [], "tensors we would write that transformers does not")
        #expect(Set(expected.keys).subtracting(ours.keys).sorted() == [], "tensors transformers writes that we would not")
        for (name, shape) in expected where ours[name] != nil { #expect(ours[name] == shape, "\(name)") }
    }

    @Test("model init writes a checkpoint that loads and computes, in every architecture, dtype and expert layout",
          arguments: Architecture.allCases, [DType.bf16, .f32])
    func initWritesUsableCheckpoints(architecture: Architecture, dtype: DType) throws {
        let dir = try temporaryDirectory()
        defer { removeDirectory(dir) }
        var spec = RandomModelSpec(architecture: architecture, layers: 3, experts: 8, topK: 2, hidden: 64)
        spec.denseLayers = (architecture == .mixtral || architecture == .olmoe) ? 0 : 1
        spec.dtype = dtype
        spec.vocab = 128
        var outputs: [[Float]] = []
        for storage in CheckpointLayout.ExpertStorage.allCases {
            let path = dir + "/" + storage.rawValue
            let config = try RandomModel.write(spec, to: path, experts: storage, maxShardBytes: 64 << 10)
            #expect(try ModelConfig.load(directory: path) == config)
            let checkpoint = try Checkpoint(directory: path)
            #expect(checkpoint.files.count > 1, "a 64 KiB shard limit splits the checkpoint")
            #expect(checkpoint.info(checkpoint.tensorNames[0])?.dtype == (checkpoint.tensorNames[0].hasSuffix("correction_bias") ? .f32 : dtype))
            let layer = config.moeLayers[0]
            let naming = try ExpertLoader(checkpoint: checkpoint, config: config).naming(layer: layer)
            #expect(storage == .fused ? naming == .fusedGateUp : [.perExpertProj, .perExpertW123].contains(naming))
            let moe = try MoELayer(checkpoint: checkpoint, config: config, layer: layer)
            var random = TestRandom(seed: 9)
            let x = random.floats(5 * 64)
            let (y, routing) = try x.withUnsafeBufferPointer { try moe.forward($0, tokens: 5) }
            #expect(y.allSatisfy(\.isFinite) && y.contains { $0 != 0 })
            #expect(Set(routing.ids).count > 1)
            outputs.append(y)
        }
        // The same seed gives the same weights whichever way the experts are stored.
        #expect(maxAbsDifference(outputs[0], outputs[1]) == 0)
    }

    @Test("The same spec and seed give the same bytes; another seed gives other weights")
    func initIsDeterministic() throws {
        let dir = try temporaryDirectory()
        defer { removeDirectory(dir) }
        var spec = RandomModelSpec(architecture: .qwen3Moe, layers: 2, experts: 4, topK: 2, hidden: 32)
        try RandomModel.write(spec, to: dir + "/a")
        try RandomModel.write(spec, to: dir + "/b")
        spec.seed = 1
        try RandomModel.write(spec, to: dir + "/c")
        let a = try Data(contentsOf: URL(fileURLWithPath: dir + "/a/model.safetensors"))
        #expect(a == (try Data(contentsOf: URL(fileURLWithPath: dir + "/b/model.safetensors"))))
        let name = "model.layers.0.mlp.experts.1.up_proj.weight"
        #expect(try Checkpoint(directory: dir + "/a").tensor(name).floats() != (try Checkpoint(directory: dir + "/c").tensor(name).floats()))
    }

    @Test("Init refuses shapes that cannot be a model, naming the option")
    func initRefusesBadSpecs() {
        var spec = RandomModelSpec(architecture: .mixtral, layers: 2, experts: 4, topK: 5, hidden: 32)
        #expect { try spec.configJSON() } throws: { "\($0)".contains("--top-k 5") }
        spec.topK = 2
        spec.denseLayers = 1
        #expect { try spec.configJSON() } throws: { "\($0)".contains("Mixtral has no dense layers") }
        spec.denseLayers = 0
        spec.heads = 5
        #expect { try spec.configJSON() } throws: { "\($0)".contains("--hidden 32 must be a multiple of --heads 5") }
    }

    @Test("Missing or misshapen expert tensors are errors naming the tensor")
    func loaderErrors() throws {
        let dir = try temporaryDirectory()
        defer { removeDirectory(dir) }
        var spec = RandomModelSpec(architecture: .deepseekV3, layers: 2, experts: 8, topK: 2, hidden: 32)
        spec.denseLayers = 1
        let config = try RandomModel.write(spec, to: dir + "/good", experts: .fused)
        let good = try Checkpoint(directory: dir + "/good")
        // Rewrite the checkpoint with one tensor dropped or reshaped, everything else copied.
        func rewrite(_ name: String, drop: Bool, shape: [Int]? = nil) throws -> Checkpoint {
            let path = dir + "/\(UUID().uuidString)"
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
            try FileManager.default.copyItem(atPath: dir + "/good/config.json", toPath: path + "/config.json")
            var tensors: [(TensorEntry, [UInt8])] = []
            for n in good.tensorNames where !(drop && n == name) {
                let t = try good.tensor(n)
                var s = t.shape
                if n == name, let shape { s = shape }
                var bytes = [UInt8](t.bytes)
                bytes += [UInt8](repeating: 0, count: max(0, s.reduce(t.dtype.byteSize, *) - bytes.count))
                bytes = Array(bytes.prefix(s.reduce(t.dtype.byteSize, *)))
                tensors.append((TensorEntry(name: n, dtype: t.dtype, shape: s), bytes))
            }
            try SafeTensorsWriter.write(path: path + "/model.safetensors", tensors: tensors)
            return try Checkpoint(directory: path)
        }
        let p = "model.layers.1.mlp"
        for (name, drop, shape, fragment) in [
            ("\(p).gate.e_score_correction_bias", true, nil, "tensor '\(p).gate.e_score_correction_bias': not in this checkpoint"),
            ("\(p).experts.gate_up_proj", false, [8, 16, 32] as [Int]?, "tensor '\(p).experts.gate_up_proj': shape [8, 16, 32], expected [8, 32, 32]"),
            ("\(p).experts.down_proj", true, nil, "tensor '\(p).experts.down_proj': not in this checkpoint"),
            ("\(p).gate.weight", true, nil, "router weight of MoE layer 1 not found"),
            ("\(p).shared_experts.up_proj.weight", false, [16, 30], "tensor '\(p).shared_experts.up_proj.weight': shape [16, 30], expected [16, 32]"),
        ] {
            let broken = try rewrite(name, drop: drop, shape: shape)
            #expect(Comment(rawValue: name)) { try MoELayer(checkpoint: broken, config: config, layer: 1) } throws: { "\($0)".contains(fragment) }
        }
        #expect { try MoELayer(checkpoint: good, config: config, layer: 0) } throws: { "\($0)".contains("layer 0 is not an MoE layer") }
        #expect { try ExpertLoader(checkpoint: good, config: config).expert(layer: 1, expert: 8) } throws: { "\($0)".contains("expert 8 does not exist") }
    }

    @Test("Loading a subset of experts leaves the others unloaded, and routing to them is an error")
    func partialLoad() throws {
        let dir = try temporaryDirectory()
        defer { removeDirectory(dir) }
        let spec = RandomModelSpec(architecture: .olmoe, layers: 1, experts: 4, topK: 4, hidden: 32)
        let config = try RandomModel.write(spec, to: dir)
        let moe = try MoELayer(checkpoint: try Checkpoint(directory: dir), config: config, layer: 0, experts: [0, 1])
        let x = [Float](repeating: 0.5, count: 32)
        #expect { try x.withUnsafeBufferPointer { try moe.forward($0, tokens: 1) } } throws: { "\($0)".contains("is not hosted here") }
    }
}
