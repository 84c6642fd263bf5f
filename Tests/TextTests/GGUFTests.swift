import Foundation
import Testing
@testable import GGUF
@testable import Text

/// GGUF files written here byte by byte: the reader returns what was written, and refuses
/// truncated or hostile headers with what was wrong instead of reading past the end.
struct GGUFTests {
    struct Writer {
        var bytes: [UInt8] = []
        mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
        mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
        mutating func string(_ s: String) { u64(UInt64(s.utf8.count)); bytes += Array(s.utf8) }
        mutating func kvString(_ key: String, _ value: String) { string(key); u32(8); string(value) }
        mutating func kvStrings(_ key: String, _ values: [String]) { string(key); u32(9); u32(8); u64(UInt64(values.count)); for v in values { string(v) } }
        mutating func kvInts(_ key: String, _ values: [Int32]) { string(key); u32(9); u32(5); u64(UInt64(values.count)); for v in values { u32(UInt32(bitPattern: v)) } }
        mutating func kvBool(_ key: String, _ value: Bool) { string(key); u32(7); bytes.append(value ? 1 : 0) }
        mutating func kvU32(_ key: String, _ value: UInt32) { string(key); u32(4); u32(value) }
    }

    /// A tiny byte-level tokenizer: the 256 byte characters, "ab", and one control token.
    static func tokenizerFile(addBOS: Bool = false) -> [UInt8] {
        var w = Writer()
        w.bytes += Array("GGUF".utf8)
        w.u32(3)
        w.u64(1)  // tensors
        w.u64(addBOS ? 8 : 6)
        let alphabet = (0..<256).map { String(ByteLevelAlphabet.character(for: UInt8($0))) }
        w.kvString("tokenizer.ggml.model", "gpt2")
        w.kvString("tokenizer.ggml.pre", "smollm")
        w.kvStrings("tokenizer.ggml.tokens", alphabet + ["ab", "<|end|>"])
        w.kvInts("tokenizer.ggml.token_type", Array(repeating: 1, count: 257) + [3])
        w.kvStrings("tokenizer.ggml.merges", ["a b"])
        w.kvString("general.architecture", "llama")
        if addBOS {
            w.kvBool("tokenizer.ggml.add_bos_token", true)
            w.kvU32("tokenizer.ggml.bos_token_id", 257)
        }
        w.string("token_embd.weight")
        w.u32(2); w.u64(4); w.u64(3)
        w.u32(0)  // F32
        w.u64(0)
        return w.bytes
    }

    @Test func readsMetadataAndTensorTable() throws {
        let file = try GGUFFile(data: Data(Self.tokenizerFile()))
        #expect(file.version == 3)
        #expect(file.string("general.architecture") == "llama")
        #expect(file.strings("tokenizer.ggml.tokens")?.count == 258)
        #expect(file.tensors == [GGUFFile.TensorInfo(name: "token_embd.weight", shape: [4, 3], type: 0, offset: 0)])
        #expect(file.dataOffset % 32 == 0)
    }

    @Test func tokenizerFromMetadata() throws {
        let tok = try Tokenizer(gguf: try GGUFFile(data: Data(Self.tokenizerFile())))
        let ab = 256, end = 257
        #expect(tok.encode("ab12<|end|>") == [ab, Int(Character("1").asciiValue!), Int(Character("2").asciiValue!), end])
        #expect(tok.decode([ab, end]) == "ab<|end|>")
        #expect(tok.decode([ab, end], skipSpecialTokens: true) == "ab")
        let withBOS = try Tokenizer(gguf: try GGUFFile(data: Data(Self.tokenizerFile(addBOS: true))))
        #expect(withBOS.encode("ab") == [end, ab])
    }

    @Test func refusesTruncatedAndHostileFiles() {
        let good = Self.tokenizerFile()
        // Every truncation of the header is refused, none reads past the end.
        for cut in stride(from: 0, to: good.count - 1, by: 7) {
            #expect(throws: GGUFError.self) { _ = try GGUFFile(data: Data(good[0..<cut])) }
        }
        var hostile = Writer()
        hostile.bytes += Array("GGUF".utf8)
        hostile.u32(3); hostile.u64(0); hostile.u64(1)
        hostile.string("k"); hostile.u32(9); hostile.u32(8); hostile.u64(UInt64.max)  // an array of 2^64 strings
        #expect { _ = try GGUFFile(data: Data(hostile.bytes)) } throws: { "\($0)".contains("array of") }
        var magic = good
        magic[0] = 0x47 ^ 0xff
        #expect { _ = try GGUFFile(data: Data(magic)) } throws: { "\($0)".contains("bad magic") }
        var version = good
        version[4] = 9
        #expect { _ = try GGUFFile(data: Data(version)) } throws: { "\($0)".contains("version 9") }
    }

    @Test func refusesOtherTokenizerModels() throws {
        var w = Writer()
        w.bytes += Array("GGUF".utf8)
        w.u32(3); w.u64(0); w.u64(1)
        w.kvString("tokenizer.ggml.model", "llama")
        let file = try GGUFFile(data: Data(w.bytes))
        #expect { _ = try Tokenizer(gguf: file) } throws: { "\($0)".contains("tokenizer.ggml.model \"llama\"") }
    }
}
