import Foundation

/// The pool's shared secret: raw bytes (a token file is read as bytes, never decoded as text, so
/// two different binary tokens never compare equal), compared in constant time so that a peer
/// learns nothing from how long a wrong guess takes.
public enum PoolToken {
    /// Longest token accepted (bytes). The wire carries up to 65,535; this bound keeps handshakes
    /// small, which is what lets a server hold many unauthenticated connections cheaply.
    public static let maxLength = 4096
    /// Tokens shorter than this are accepted with a warning: they can be guessed.
    public static let recommendedMinimum = 16

    /// Whether `candidate` equals `expected`. Time depends only on the lengths, never on where
    /// the bytes first differ.
    public static func matches(_ candidate: [UInt8], _ expected: [UInt8]) -> Bool {
        var difference = UInt8(truncatingIfNeeded: candidate.count ^ expected.count)
        let n = max(candidate.count, expected.count)
        for i in 0..<n {
            let a = i < candidate.count ? candidate[i] : 0
            let b = i < expected.count ? expected[i] : 0
            difference |= a ^ b
        }
        return difference == 0 && candidate.count == expected.count
    }

    /// Checks a token's length; `source` names where it came from in the error.
    public static func validate(_ token: [UInt8], source: String) throws {
        guard !token.isEmpty else { throw PoolTokenError("the pool token from \(source) is empty") }
        guard token.count <= maxLength else {
            throw PoolTokenError("the pool token from \(source) is \(token.count) bytes; at most \(maxLength) are accepted")
        }
    }

    /// A token and what was worth warning about while loading it.
    public struct Loaded: Sendable {
        public var token: [UInt8]
        public var warnings: [String]
    }

    /// Reads the token from `file` (its bytes, less trailing ASCII whitespace such as the newline
    /// `echo` adds) or else from `EAAS_POOL_TOKEN` in `environment`; validates its length. A
    /// file readable by group or others, or a short token, is accepted with a warning.
    public static func load(file: String?, environment: [String: String] = ProcessInfo.processInfo.environment) throws -> Loaded {
        var warnings: [String] = []
        let token: [UInt8]
        let source: String
        if let file {
            source = "--pool-token-file \(file)"
            guard let data = FileManager.default.contents(atPath: file) else { throw PoolTokenError("\(source) cannot be read") }
            token = trimmed(Array(data))
            // As ssh does for keys, except that a group-readable file of this process's own group
            // is fine: that is how Kubernetes gives a non-root pod its Secret (fsGroup, mode 0440).
            var info = stat()
            if stat(file, &info) == 0, info.st_mode & 0o007 != 0 || (info.st_mode & 0o070 != 0 && info.st_gid != getegid()) {
                warnings.append("\(source) is readable by group or others (mode \(String(info.st_mode & 0o777, radix: 8))); it holds the pool's secret: chmod 600 it")
            }
        } else {
            source = "EAAS_POOL_TOKEN"
            guard let text = environment["EAAS_POOL_TOKEN"] else { throw PoolTokenError("no pool token: set EAAS_POOL_TOKEN or pass --pool-token-file") }
            token = trimmed(Array(text.utf8))
        }
        try validate(token, source: source)
        if token.count < recommendedMinimum {
            warnings.append("the pool token from \(source) is only \(token.count) bytes; use at least \(recommendedMinimum) random bytes (head -c 32 /dev/urandom)")
        }
        return Loaded(token: token, warnings: warnings)
    }

    /// A new token of 32 random bytes from the system's generator, written as 64 hex digits (text,
    /// so it survives an environment variable or a Secret's string data unchanged).
    public static func random() -> [UInt8] {
        var generator = SystemRandomNumberGenerator()
        return Array((0..<32).map { _ in String(format: "%02x", UInt8.random(in: 0...255, using: &generator)) }.joined().utf8)
    }

    /// Drops trailing spaces, tabs, CR and LF (bytes, not characters), as `load` does.
    public static func trimmed(_ bytes: [UInt8]) -> [UInt8] {
        var end = bytes.count
        while end > 0, [0x20, 0x09, 0x0A, 0x0D].contains(bytes[end - 1]) { end -= 1 }
        return Array(bytes[0..<end])
    }
}

/// A pool token that cannot be used, and why.
public struct PoolTokenError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}
