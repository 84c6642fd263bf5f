import Foundation
import Testing

/// `eaas tokenize` as scripts use it: JSON lines in, JSON lines out, bad lines named.
struct TokenizeCommandTests {
    static func run(_ arguments: [String], stdin: String) throws -> (status: Int32, stdout: String, stderr: String) {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("eaas-tokenize-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let input = directory.appendingPathComponent("in")
        try stdin.write(to: input, atomically: true, encoding: .utf8)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: CLITests.binary)
        process.arguments = arguments
        process.standardInput = try FileHandle(forReadingFrom: input)
        let out = directory.appendingPathComponent("out"), err = directory.appendingPathComponent("err")
        FileManager.default.createFile(atPath: out.path, contents: nil)
        FileManager.default.createFile(atPath: err.path, contents: nil)
        process.standardOutput = try FileHandle(forWritingTo: out)
        process.standardError = try FileHandle(forWritingTo: err)
        try process.run()
        process.waitUntilExit()
        return (process.terminationStatus, try String(contentsOf: out, encoding: .utf8), try String(contentsOf: err, encoding: .utf8))
    }

    static func tokenizerFile() throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("eaas-tokenizer-\(UUID().uuidString).json").path
        let json = #"""
            {"model": {"type": "BPE", "vocab": {"h": 0, "i": 1, "hi": 2, " ": 3}, "merges": ["h i"]},
             "added_tokens": [{"id": 4, "content": "<s>", "special": true, "normalized": false}],
             "post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                                "special_tokens": {"<s>": {"id": "<s>", "ids": [4], "tokens": ["<s>"]}}},
             "decoder": {"type": "Fuse"}}
            """#
        try json.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    @Test func encodesAndDecodesLines() throws {
        let tokenizer = try Self.tokenizerFile()
        defer { try? FileManager.default.removeItem(atPath: tokenizer) }
        let encoded = try Self.run(["tokenize", "--tokenizer", tokenizer], stdin: "\"hi hi\"\n\"ih\"\n")
        #expect(encoded.status == 0, "\(encoded.stderr)")
        #expect(encoded.stdout == "[4,2,3,2]\n[4,1,0]\n")
        let plain = try Self.run(["tokenize", "--tokenizer", tokenizer, "--no-special-tokens"], stdin: "\"hi\"\n")
        #expect(plain.stdout == "[2]\n")
        let decoded = try Self.run(["tokenize", "--tokenizer", tokenizer, "--decode"], stdin: "[4,2,3,2]\n")
        #expect(decoded.stdout == "\"<s>hi hi\"\n")
    }

    @Test func namesBadLinesAndGoesOn() throws {
        let tokenizer = try Self.tokenizerFile()
        defer { try? FileManager.default.removeItem(atPath: tokenizer) }
        let result = try Self.run(["tokenize", "--tokenizer", tokenizer], stdin: "\"hi\"\n42\n{\n\"i\"\n")
        #expect(result.status == 1)
        #expect(result.stdout == "[4,2]\n[4,1]\n")
        #expect(result.stderr.contains("line 2: not a JSON string"))
        #expect(result.stderr.contains("line 3:"))
        let ids = try Self.run(["tokenize", "--tokenizer", tokenizer, "--decode"], stdin: "[2, 99]\n")
        #expect(ids.status == 1)
        #expect(ids.stderr.contains("line 1: 99 is not an id below 5"))
        let missing = try Self.run(["tokenize", "--tokenizer", "/nonexistent/tokenizer.json"], stdin: "")
        #expect(missing.status != 0)
        #expect(missing.stderr.contains("no such file"))
    }
}
