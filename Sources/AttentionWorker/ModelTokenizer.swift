import Foundation
import GGUF
import JSON
import Text

/// What a served model reads and writes text with: its tokenizer, its chat template and the
/// template's special-token variables (`bos_token`, `eos_token` …), and the end-of-turn tokens text
/// requests stop at. Loaded from a model directory the way transformers loads one
/// (`tokenizer.json`, `tokenizer_config.json`, `chat_template.jinja`), or from a GGUF file.
public struct ModelTokenizer: Sendable {
    public let tokenizer: Tokenizer
    public let chatTemplate: ChatTemplate?
    public let templateVariables: [String: String]
    /// The tokenizer's own end-of-sequence token (tokenizer_config's `eos_token`), stopped at too.
    public let stopTokenIDs: Set<Int>

    public init(tokenizer: Tokenizer, chatTemplate: ChatTemplate?, templateVariables: [String: String], stopTokenIDs: Set<Int>) {
        self.tokenizer = tokenizer
        self.chatTemplate = chatTemplate
        self.templateVariables = templateVariables
        self.stopTokenIDs = stopTokenIDs
    }

    /// Why a model's tokenizer files could not be used.
    public struct LoadError: Error, CustomStringConvertible {
        public let description: String
    }

    /// The tokenizer of a model directory (nil when it has no tokenizer.json), or of `path`
    /// (a tokenizer.json, a directory, or a GGUF file) when given.
    public static func load(modelDirectory: String, tokenizer path: String? = nil) throws -> ModelTokenizer? {
        let directory = path.map { p -> String in
            var isDirectory: ObjCBool = false
            FileManager.default.fileExists(atPath: p, isDirectory: &isDirectory)
            return isDirectory.boolValue ? p : (p as NSString).deletingLastPathComponent
        } ?? modelDirectory
        let file = path ?? (modelDirectory as NSString).appendingPathComponent("tokenizer.json")
        guard path != nil || FileManager.default.fileExists(atPath: file) else { return nil }
        let tokenizer: Tokenizer
        do { tokenizer = try Tokenizer(contentsOf: file) } catch { throw LoadError(description: "\(file): \(error)") }

        var variables: [String: String] = [:]
        var templateSource: String?
        let configPath = (directory as NSString).appendingPathComponent("tokenizer_config.json")
        if FileManager.default.fileExists(atPath: configPath) {
            let config: JSONValue
            do { config = try JSONValue.parse(try Data(contentsOf: URL(fileURLWithPath: configPath))) } catch {
                throw LoadError(description: "\(configPath): \(error)")
            }
            for key in ["bos_token", "eos_token", "pad_token", "unk_token"] {
                if let s = config[key]?.string { variables[key] = s } else if let s = config[key]?["content"]?.string { variables[key] = s }
            }
            if let s = config["chat_template"]?.string {
                templateSource = s
            } else if let list = config["chat_template"]?.array {
                // Several named templates: the one named "default".
                templateSource = list.first { $0["name"]?.string == "default" }?["template"]?.string
            }
        }
        let jinja = (directory as NSString).appendingPathComponent("chat_template.jinja")
        if templateSource == nil, let s = try? String(contentsOfFile: jinja, encoding: .utf8) { templateSource = s }
        if templateSource == nil, file.hasSuffix(".gguf") {
            templateSource = try? GGUFChatTemplate.read(file)
        }
        var template: ChatTemplate?
        if let templateSource {
            do { template = try ChatTemplate(templateSource) } catch { throw LoadError(description: "the chat template of \(directory): \(error)") }
        }
        var stops: Set<Int> = []
        if let eos = variables["eos_token"], let id = tokenizer.id(for: eos) { stops.insert(id) }
        return ModelTokenizer(tokenizer: tokenizer, chatTemplate: template, templateVariables: variables, stopTokenIDs: stops)
    }

    /// Refuses a tokenizer whose ids the model cannot embed.
    public func check(vocabularySize modelVocabulary: Int) throws {
        guard tokenizer.vocabularySize <= modelVocabulary else {
            throw LoadError(description: "the tokenizer has \(tokenizer.vocabularySize) ids but the model's vocabulary is \(modelVocabulary): they do not belong together")
        }
    }

    /// The prompt ids of a chat: the template rendered with the generation prompt, encoded without
    /// adding special tokens (the template writes its own BOS).
    public func chatPrompt(_ messages: [ChatTemplate.Message]) throws(TemplateError) -> [Int] {
        guard let chatTemplate else { throw TemplateError("this model has no chat template") }
        let text = try chatTemplate.render(messages: messages, addGenerationPrompt: true, variables: templateVariables)
        return tokenizer.encode(text, addSpecialTokens: false)
    }
}

enum GGUFChatTemplate {
    static func read(_ path: String) throws -> String? {
        try GGUFFile(path: path).string("tokenizer.chat_template")
    }
}
