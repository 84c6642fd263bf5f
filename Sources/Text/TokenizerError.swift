/// Why a tokenizer could not be loaded or a text could not be encoded. Every case names what was wrong.
public enum TokenizerError: Error, CustomStringConvertible, Sendable, Equatable {
    /// The file could not be read.
    case unreadable(String)
    /// The file is not what it claims (bad JSON, a missing field, an id out of range …).
    case invalid(String)
    /// The file asks for a component or an option this implementation does not have, by name.
    case unsupported(String)

    public var description: String {
        switch self {
        case .unreadable(let m): return "tokenizer: cannot read \(m)"
        case .invalid(let m): return "tokenizer: invalid: \(m)"
        case .unsupported(let m): return "tokenizer: unsupported: \(m)"
        }
    }
}
