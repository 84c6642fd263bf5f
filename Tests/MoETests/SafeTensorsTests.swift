import Foundation
import Testing
@testable import MoE

/// Writes a safetensors file byte for byte from a header text and data, so that tests can make
/// every kind of broken file.
private func rawFile(_ directory: String, header: String, data: [UInt8], lengthOverride: UInt64? = nil) throws -> String {
    let path = directory + "/raw-\(UUID().uuidString).safetensors"
    var bytes: [UInt8] = []
    let headerBytes = Array(header.utf8)
    var length = (lengthOverride ?? UInt64(headerBytes.count)).littleEndian
    withUnsafeBytes(of: &length) { bytes += $0 }
    bytes += headerBytes + data
    try Data(bytes).write(to: URL(fileURLWithPath: path))
    return path
}

@Suite("safetensors reader and writer")
struct SafeTensorsTests {
    @Test("Tensors written in F32, F16 and BF16 read back as written (16-bit types rounded to nearest even)")
    func roundTrip() throws {
        let dir = try temporaryDirectory()
        defer { removeDirectory(dir) }
        var random = TestRandom(seed: 1)
        let values = random.floats(24) + [0, -0, 1, 65504, 1e-7, .infinity]
        let entries = [DType.f32, .f16, .bf16].map { TensorEntry(name: "t.\($0.rawValue)", dtype: $0, shape: [5, 6]) }
        let writer = try SafeTensorsWriter(path: dir + "/a.safetensors", entries: entries, metadata: ["format": "pt", "note": "quote \" and \\ kept"])
        for entry in entries { try writer.append(entry.name, floats: values) }
        try writer.finish()

        let file = try SafeTensorsFile(path: dir + "/a.safetensors")
        #expect(file.metadata == ["format": "pt", "note": "quote \" and \\ kept"])
        #expect(try file.tensor("t.F32").floats() == values)
        let half = try file.tensor("t.F16").floats()
        let brain = try file.tensor("t.BF16").floats()
        for (i, v) in values.enumerated() where v.isFinite && abs(v) < 60000 {
            #expect(abs(half[i] - v) <= max(abs(v) / 1024, 6e-8), "f16 of \(v) is \(half[i])")
            #expect(abs(brain[i] - v) <= abs(v) / 128, "bf16 of \(v) is \(brain[i])")
        }
        #expect(half[27] == 65504 && brain.last == .infinity && half.last == .infinity)
        #expect(file.tensors["t.F16"]?.shape == [5, 6])
    }

    @Test("A sharded checkpoint is read through its index, one file or many alike")
    func shardedCheckpoint() throws {
        let dir = try temporaryDirectory()
        defer { removeDirectory(dir) }
        let entries = (0..<6).map { TensorEntry(name: "layer.\($0).weight", dtype: .f32, shape: [4, 4]) }
        let writer = try CheckpointWriter(directory: dir, entries: entries, maxShardBytes: 2 * 64)
        for (i, entry) in entries.enumerated() { try writer.append(entry.name, floats: [Float](repeating: Float(i), count: 16)) }
        try writer.finish()
        let checkpoint = try Checkpoint(directory: dir)
        #expect(checkpoint.files.count == 3)
        #expect(checkpoint.files.keys.sorted().first == "model-00001-of-00003.safetensors")
        #expect(checkpoint.tensorNames == entries.map(\.name))
        for i in 0..<6 { #expect(try checkpoint.tensor("layer.\(i).weight").floats() == [Float](repeating: Float(i), count: 16)) }
        #expect(checkpoint.totalBytes == 6 * 64)
    }

    /// Each broken header, and a fragment the error must contain (naming the tensor where there is one).
    static let badHeaders: [(String, String, [UInt8], String)] = [
        ("not JSON", "{\"a\": ", [], "not valid JSON"),
        ("not an object", "[1, 2]", [], "not a JSON object"),
        ("missing dtype", #"{"w":{"shape":[1],"data_offsets":[0,4]}}"#, [0, 0, 0, 0], "tensor 'w': missing string field 'dtype'"),
        ("unknown dtype", #"{"w":{"dtype":"F33","shape":[1],"data_offsets":[0,4]}}"#, [0, 0, 0, 0], "tensor 'w': unknown dtype 'F33'"),
        ("negative dimension", #"{"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}"#, [0, 0, 0, 0], "tensor 'w': shape"),
        ("fractional dimension", #"{"w":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}}"#, [0, 0, 0, 0], "tensor 'w': shape"),
        ("offsets past the data", #"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#, [0, 0, 0, 0], "tensor 'w': data_offsets end 8 is past"),
        ("reversed offsets", #"{"w":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}}"#, [0, 0, 0, 0], "tensor 'w': data_offsets [4, 0]"),
        ("missing offsets", #"{"w":{"dtype":"F32","shape":[1]}}"#, [0, 0, 0, 0], "tensor 'w': missing field 'data_offsets'"),
        ("size mismatch", #"{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]}}"#, [UInt8](repeating: 0, count: 12), "tensor 'w': shape [2, 2] of F32 needs 16 bytes but data_offsets span 12"),
        ("overflowing shape", #"{"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}}"#, [0, 0, 0, 0], "tensor 'w': shape [4294967296, 4294967296] is too large"),
        ("overlap", #"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#, [UInt8](repeating: 0, count: 8), "overlap tensor"),
        ("hole", #"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}"#, [UInt8](repeating: 0, count: 12), "tensor 'b': starts at byte 8 but the previous tensor ends at 4"),
        ("trailing bytes", #"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#, [UInt8](repeating: 0, count: 8), "tensors cover 4 bytes but the data section holds 8"),
        ("metadata not strings", #"{"__metadata__":{"a":1}}"#, [], "__metadata__ value 'a' is not a string"),
    ]

    @Test("Every malformed header is refused with an error naming the problem and the tensor", arguments: badHeaders.map { $0.0 })
    func badHeaderIsRefused(name: String) throws {
        let (_, header, data, fragment) = Self.badHeaders.first { $0.0 == name }!
        let dir = try temporaryDirectory()
        defer { removeDirectory(dir) }
        let path = try rawFile(dir, header: header, data: data)
        #expect {
            try SafeTensorsFile(path: path)
        } throws: { error in
            "\(error)".contains(fragment) && "\(error)".contains(path)
        }
    }

    @Test("Files too short for a header, or whose header length runs past the end, are refused")
    func truncatedFiles() throws {
        let dir = try temporaryDirectory()
        defer { removeDirectory(dir) }
        let short = dir + "/short.safetensors"
        try Data([1, 2, 3]).write(to: URL(fileURLWithPath: short))
        #expect { try SafeTensorsFile(path: short) } throws: { "\($0)".contains("file is 3 bytes") }
        let empty = dir + "/empty.safetensors"
        try Data().write(to: URL(fileURLWithPath: empty))
        #expect { try SafeTensorsFile(path: empty) } throws: { "\($0)".contains("file is 0 bytes") }
        let long = try rawFile(dir, header: "{}", data: [], lengthOverride: 1000)
        #expect { try SafeTensorsFile(path: long) } throws: { "\($0)".contains("runs past the end") }
        let huge = try rawFile(dir, header: "{}", data: [], lengthOverride: UInt64.max)
        #expect { try SafeTensorsFile(path: huge) } throws: { "\($0)".contains("exceeds the format's limit") }
        #expect { try SafeTensorsFile(path: dir + "/missing.safetensors") } throws: { "\($0)".contains("open") && "\($0)".contains("missing.safetensors") }
    }

    @Test("Asking for a tensor that is absent, or of a non-float type as floats, names the tensor")
    func badRequests() throws {
        let dir = try temporaryDirectory()
        defer { removeDirectory(dir) }
        let path = try rawFile(dir, header: #"{"ids":{"dtype":"I64","shape":[2],"data_offsets":[0,16]},"f8":{"dtype":"F8_E4M3","shape":[1],"data_offsets":[16,17]}}"#,
                               data: [7, 0, 0, 0, 0, 0, 0, 0, 255, 255, 255, 255, 255, 255, 255, 255, 1])
        let file = try SafeTensorsFile(path: path)
        #expect(try file.tensor("ids").integers() == [7, -1])
        #expect { try file.tensor("nope") } throws: { "\($0)".contains("tensor 'nope': not in this file") }
        #expect { try file.tensor("ids").floats() } throws: { "\($0)".contains("tensor 'ids': dtype I64 is not supported here") }
        #expect { try file.tensor("f8").floats() } throws: { "\($0)".contains("tensor 'f8': dtype F8_E4M3") }
    }

    @Test("A sharded index that points at a missing tensor, a missing file or outside the directory is refused")
    func badIndex() throws {
        let dir = try temporaryDirectory()
        defer { removeDirectory(dir) }
        try SafeTensorsWriter.write(path: dir + "/part.safetensors", tensors: [(TensorEntry(name: "a", dtype: .f32, shape: [1]), [0, 0, 0, 0])])
        func index(_ map: String) throws {
            try Data(#"{"metadata":{},"weight_map":\#(map)}"#.utf8).write(to: URL(fileURLWithPath: dir + "/model.safetensors.index.json"))
        }
        try index(#"{"a":"part.safetensors","b":"part.safetensors"}"#)
        #expect { try Checkpoint(directory: dir) } throws: { "\($0)".contains("tensor 'b': the index places it in part.safetensors") }
        try index(#"{"a":"gone.safetensors"}"#)
        #expect { try Checkpoint(directory: dir) } throws: { "\($0)".contains("gone.safetensors") }
        try index(#"{"a":"../part.safetensors"}"#)
        #expect { try Checkpoint(directory: dir) } throws: { "\($0)".contains("tensor 'a': weight_map entry is not a file name") }
        try index(#"{"a":"part.safetensors"}"#)
        #expect(try Checkpoint(directory: dir).tensor("a").floats() == [0])
        #expect { try Checkpoint(directory: dir + "/nothing") } throws: { "\($0)".contains("no model.safetensors") }
    }

    @Test("The writer refuses out-of-order, wrongly sized, duplicate and missing tensors")
    func writerMisuse() throws {
        let dir = try temporaryDirectory()
        defer { removeDirectory(dir) }
        let entries = [TensorEntry(name: "a", dtype: .f32, shape: [2]), TensorEntry(name: "b", dtype: .bf16, shape: [2])]
        #expect { try SafeTensorsWriter(path: dir + "/d.safetensors", entries: entries + entries) } throws: { "\($0)".contains("tensor 'a': written twice") }
        let writer = try SafeTensorsWriter(path: dir + "/w.safetensors", entries: entries)
        #expect { try writer.append("b", floats: [1, 2]) } throws: { "\($0)".contains("tensor 'b': written out of order") }
        #expect { try writer.append("a", floats: [1, 2, 3]) } throws: { "\($0)".contains("tensor 'a': got 12 bytes") }
        try writer.append("a", floats: [1, 2])
        #expect { try writer.finish() } throws: { "\($0)".contains("tensor 'b': declared but never written") }
    }

    @Test("A file appears only when finished: a dropped writer leaves nothing, a finished one replaces the old file")
    func atomicWrites() throws {
        let dir = try temporaryDirectory()
        defer { removeDirectory(dir) }
        let path = dir + "/m.safetensors"
        let entries = [TensorEntry(name: "a", dtype: .f32, shape: [2])]
        do {
            let writer = try SafeTensorsWriter(path: path, entries: entries)
            try writer.append("a", floats: [1, 2])
            #expect(!FileManager.default.fileExists(atPath: path), "visible before finish()")
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir).isEmpty, "a dropped writer leaves a partial file")
        let writer = try SafeTensorsWriter(path: path, entries: entries)
        try writer.append("a", floats: [1, 2])
        try writer.finish()
        let old = try SafeTensorsFile(path: path)
        let again = try SafeTensorsWriter(path: path, entries: entries)
        try again.append("a", floats: [3, 4])
        try again.finish()
        // The first mapping still reads its own (replaced, not truncated) file.
        #expect(try old.tensor("a").floats() == [1, 2])
        #expect(try SafeTensorsFile(path: path).tensor("a").floats() == [3, 4])
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir) == ["m.safetensors"])
    }

    @Test("Random corruption of a valid file never crashes the reader: it opens or says what is wrong")
    func corruptionNeverCrashes() throws {
        let dir = try temporaryDirectory()
        defer { removeDirectory(dir) }
        let good = dir + "/good.safetensors"
        try SafeTensorsWriter.write(path: good, tensors: [
            (TensorEntry(name: "model.a", dtype: .f32, shape: [3, 2]), [UInt8](repeating: 1, count: 24)),
            (TensorEntry(name: "model.b", dtype: .bf16, shape: [4]), [UInt8](repeating: 2, count: 8)),
        ])
        let original = try [UInt8](Data(contentsOf: URL(fileURLWithPath: good)))
        var random = TestRandom(seed: 7)
        var opened = 0, refused = 0
        for round in 0..<600 {
            var bytes = original
            let edits = 1 + Int(random.next() % 4)
            for _ in 0..<edits {
                let position = Int(random.next() % UInt64(bytes.count))
                switch random.next() % 3 {
                case 0: bytes[position] = UInt8(truncatingIfNeeded: random.next())
                case 1: bytes.removeSubrange(position...)
                default: bytes.insert(UInt8(ascii: ["{", "}", "\"", "9", ",", "-"][Int(random.next() % 6)]), at: position)
                }
                if bytes.isEmpty { break }
            }
            let path = dir + "/c\(round % 4).safetensors"
            try Data(bytes).write(to: URL(fileURLWithPath: path))
            do {
                let file = try SafeTensorsFile(path: path)
                for name in file.tensors.keys { _ = try? file.tensor(name).floats() }
                opened += 1
            } catch let error as SafeTensorsError {
                #expect(!error.reason.isEmpty)
                refused += 1
            }
        }
        #expect(refused > 300, "most corruptions are caught (\(refused) refused, \(opened) opened)")
    }
}
