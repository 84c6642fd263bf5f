// Compiled into the fuzz build's `AttentionWorker` module in place of
// Sources/AttentionWorker/SequenceFailure.swift, which imports Transport (for `SequenceFailure.step`,
// classifying Dispatcher errors) and would pull the whole data plane into this target.
// GenerationRequest.swift only names the type (`GenerationEvent.failed`); nothing here makes one.
// If `step(_:)` moves next to its caller (GenerationEngine.swift), compile SequenceFailure.swift
// itself instead of this stub.
public enum SequenceFailure: Error, Sendable, Equatable {}
