// Compiled into every fuzz target with its Fuzz.swift.

/// A property a target checks; a failure stops the run with `message` (which `precondition`
/// drops in optimised builds) and libFuzzer keeps the input as a crash.
@inline(__always)
func require(_ condition: Bool, _ message: @autoclosure () -> String, file: StaticString = #fileID, line: UInt = #line) {
    if !condition { fatalError(message(), file: file, line: line) }
}
