import ArgumentParser
import Foundation
import JSON
import Text

/// `eaas tokenize`: a tokenizer as a filter for scripts. Reads one JSON string per line and prints
/// one JSON array of ids per line, or with `--decode` the reverse.
struct TokenizeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tokenize",
        abstract: "Encode JSON strings (one per line on stdin) to JSON arrays of ids, or --decode the reverse.",
        discussion: """
            The tokenizer is a tokenizer.json, a GGUF model file, or a model directory holding tokenizer.json.
            A bad line is reported on stderr with its line number and the run goes on; the exit status is 1 if any line was bad.
            """
    )

    @Option(help: "tokenizer.json, a .gguf file, or a model directory.") var tokenizer: String
    @Flag(help: "Read JSON arrays of ids and print the decoded JSON strings.") var decode = false
    @Flag(help: "Encode without the special tokens the tokenizer adds (a BOS); decode dropping special tokens.")
    var noSpecialTokens = false

    func run() throws {
        let loaded: Tokenizer
        do { loaded = try Tokenizer(contentsOf: tokenizer) } catch { throw ValidationError("--tokenizer: \(error)") }
        var bad = 0
        var lineNumber = 0
        var output = ""
        while let line = readLine(strippingNewline: true) {
            lineNumber += 1
            if line.isEmpty { continue }
            do {
                let value = try JSONValue.parse(line)
                if decode {
                    guard let items = value.array else { throw TokenizeLineError("not a JSON array of ids") }
                    var ids: [Int] = []
                    for item in items {
                        guard let id = item.int, id >= 0, id < loaded.vocabularySize else {
                            throw TokenizeLineError("\(item.compact) is not an id below \(loaded.vocabularySize)")
                        }
                        ids.append(id)
                    }
                    output += JSONValue.quoted(loaded.decode(ids, skipSpecialTokens: noSpecialTokens))
                } else {
                    guard let text = value.string else { throw TokenizeLineError("not a JSON string") }
                    output += "[" + loaded.encode(text, addSpecialTokens: !noSpecialTokens).map(String.init).joined(separator: ",") + "]"
                }
                output += "\n"
            } catch {
                bad += 1
                FileHandle.standardError.write(Data("eaas tokenize: line \(lineNumber): \(error)\n".utf8))
            }
            if output.utf8.count > 1 << 16 { print(output, terminator: ""); output = "" }
        }
        print(output, terminator: "")
        if bad > 0 { throw ExitCode(1) }
    }
}

struct TokenizeLineError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// `eaas bench tokenizer`: encode throughput on one thread against Hugging Face `tokenizers` on one
/// thread, same files, same corpus, measured side by side in this run.
struct TokenizerBenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tokenizer",
        abstract: "Tokenizer encode throughput on one thread, beside Hugging Face tokenizers on one thread.",
        discussion: """
            --manifest takes what scripts/tokenizer-references prints (the five real tokenizers and its corpus):
              eaas bench tokenizer --manifest "$(scripts/tokenizer-references)"
            or name files with --tokenizer (repeatable) and --corpus (JSON strings, one per line).
            tokenizers runs in --python with RAYON_NUM_THREADS=1, through encode_batch (no Python call per string).
            Run from a release build (swift build -c release); debug numbers mean nothing.
            """
    )

    @Option(help: "A manifest written by scripts/tokenizer-references.") var manifest: String?
    @Option(help: "tokenizer.json, .gguf or model directory (repeatable); with --corpus.") var tokenizer: [String] = []
    @Option(help: "JSON strings, one per line.") var corpus: String?
    @Option(help: "Python with `tokenizers` for the reference (default: .venv/bin/python, then python3).") var python: String?
    @Option(help: "Timed passes over the corpus; the best is kept.") var repeats: Int = 3
    @Flag(help: "Print one JSON document instead of a table.") var json = false

    func validate() throws {
        guard manifest != nil || (!tokenizer.isEmpty && corpus != nil) else {
            throw ValidationError("give --manifest, or --tokenizer and --corpus")
        }
        guard repeats >= 1, repeats <= 100 else { throw ValidationError("--repeats must be between 1 and 100") }
    }

    struct Target {
        let name: String
        let load: String
        let hf: String?
    }

    func targets() throws -> (corpus: String, targets: [Target]) {
        if let manifest {
            let value: JSONValue
            do { value = try JSONValue.parse(try Data(contentsOf: URL(fileURLWithPath: manifest))) } catch {
                throw ValidationError("--manifest \(manifest): \(error)")
            }
            guard let corpus = value["corpus"]?.string, let entries = value["tokenizers"]?.array else {
                throw ValidationError("--manifest \(manifest): no corpus or tokenizers")
            }
            return (corpus, entries.compactMap { e in
                guard let name = e["name"]?.string, let load = e["load"]?.string else { return nil }
                return Target(name: name, load: load, hf: e["hf_tokenizer"]?.string)
            })
        }
        return (corpus!, tokenizer.map { path in
            Target(name: (path as NSString).lastPathComponent, load: path, hf: path.hasSuffix(".gguf") ? nil : path)
        })
    }

    func run() throws {
        #if DEBUG
        FileHandle.standardError.write(Data("warning: this is a debug build; its numbers mean nothing (swift build -c release)\n".utf8))
        #endif
        let (corpusPath, targets) = try targets()
        let strings: [String]
        do {
            strings = try String(contentsOfFile: corpusPath, encoding: .utf8).split(separator: "\n").map {
                guard let s = try JSONValue.parse(String($0)).string else { throw TokenizeLineError("not a JSON string: \($0.prefix(60))") }
                return s
            }
        } catch {
            throw ValidationError("--corpus \(corpusPath): \(error)")
        }
        let bytes = strings.reduce(0) { $0 + $1.utf8.count }
        // The ceiling beside the figures: reading every scalar of the corpus once, the least any
        // tokenizer does before it splits or merges anything (one thread, this build).
        var scanBest = Double.infinity
        var scanSum: UInt32 = 0
        for _ in 0..<repeats {
            scanBest = min(scanBest, timeSeconds { for s in strings { for u in s.unicodeScalars { scanSum &+= u.value } } })
        }
        withExtendedLifetime(scanSum) {}
        let scan = Double(bytes) / scanBest / 1e6
        let python = self.python ?? ["./.venv/bin/python", "/usr/bin/python3"].first { FileManager.default.isExecutableFile(atPath: $0) }
        var report = BenchReport(bench: "tokenizer")
        var table = TextTable(columns: ["tokenizer", "strings", "MB", "tokens", "ours MB/s", "tokenizers MB/s", "ours ÷ tokenizers"])
        var ratios: [Double] = []
        for target in targets {
            let tok = try Tokenizer(contentsOf: target.load)
            var tokens = 0
            var best = Double.infinity
            for _ in 0..<repeats {
                var count = 0
                let t = timeSeconds { for s in strings { count += tok.encodeIDs(s).count } }
                tokens = count
                best = min(best, t)
            }
            let ours = Double(bytes) / best / 1e6
            var reference: Double? = nil
            var referenceTokens: Int? = nil
            if let python, let hf = target.hf {
                (reference, referenceTokens) = try Self.referenceRate(python: python, tokenizer: hf, corpus: corpusPath, repeats: repeats, bytes: bytes)
            }
            if let referenceTokens, referenceTokens != tokens {
                FileHandle.standardError.write(Data("warning: \(target.name): tokenizers made \(referenceTokens) tokens, we made \(tokens)\n".utf8))
            }
            let ratio = reference.map { ours / $0 }
            if let ratio { ratios.append(ratio) }
            table.rows.append([target.name, "\(strings.count)", String(format: "%.2f", Double(bytes) / 1e6), "\(tokens)",
                               String(format: "%.1f", ours), reference.map { String(format: "%.1f", $0) } ?? "-",
                               ratio.map { String(format: "%.2f", $0) } ?? "-"])
            var row: [String: Any] = ["tokenizer": target.name, "strings": strings.count, "bytes": bytes, "tokens": tokens,
                                      "ours_mb_s": ours, "seconds": best]
            if let reference { row["tokenizers_mb_s"] = reference }
            if let ratio { row["ours_over_tokenizers"] = ratio }
            report.results.append(row)
        }
        if let worst = ratios.min() { report.summary["min_ours_over_tokenizers"] = worst }
        report.summary["scalar_scan_mb_s"] = scan
        report.summary["threads"] = 1
        if json {
            print(try report.json())
        } else {
            print("Encode throughput, one thread each (UTF-8 MB of corpus per second; best of \(repeats)):")
            print(table.render())
            print(String(format: "Ceiling: reading every scalar of the corpus once runs at %.1f MB/s on one thread.", scan))
            if python == nil { print("(no Python with `tokenizers` found: give --python to compare)") }
        }
    }

    /// tokenizers' rate on one thread: encode_batch over the corpus, best of `repeats`.
    static func referenceRate(python: String, tokenizer: String, corpus: String, repeats: Int, bytes: Int) throws -> (Double?, Int?) {
        let script = """
            import json, sys, time
            from tokenizers import Tokenizer
            tok = Tokenizer.from_file(sys.argv[1])
            strings = [json.loads(l) for l in open(sys.argv[2], encoding="utf-8") if l.strip()]
            best = float("inf")
            for _ in range(int(sys.argv[3])):
                t = time.perf_counter()
                out = tok.encode_batch(strings)
                best = min(best, time.perf_counter() - t)
            print(best, sum(len(e.ids) for e in out))
            """
        let process = Process()
        process.executableURL = URL(fileURLWithPath: python)
        process.arguments = ["-c", script, tokenizer, corpus, "\(repeats)"]
        var environment = ProcessInfo.processInfo.environment
        environment["RAYON_NUM_THREADS"] = "1"
        environment["TOKENIZERS_PARALLELISM"] = "true"
        process.environment = environment
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = FileHandle.standardError
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        let parts = String(decoding: data, as: UTF8.self).split(whereSeparator: \.isWhitespace)
        guard process.terminationStatus == 0, parts.count == 2, let seconds = Double(parts[0]), let tokens = Int(parts[1]) else {
            FileHandle.standardError.write(Data("warning: tokenizers in \(python) did not run on \(tokenizer)\n".utf8))
            return (nil, nil)
        }
        return (Double(bytes) / seconds / 1e6, tokens)
    }
}
