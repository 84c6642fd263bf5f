import Foundation
import JSON

/// Leader election on a `coordination.k8s.io/v1` Lease, with client-go's algorithm and default
/// durations: a candidate takes the lease when its holder has not renewed it for a lease duration
/// *as observed locally* (clocks are never compared), the leader renews every retry period and
/// steps down when it cannot renew within the renew deadline — which is shorter than the lease
/// duration, so the old leader has stopped before anyone else may start.
public final class LeaderElector: @unchecked Sendable {
    /// Election settings; defaults are client-go's (15 s / 10 s / 2 s).
    public struct Configuration: Sendable {
        public var leaseName: String
        public var namespace: String
        /// This candidate's unique identity (default: hostname and a random suffix).
        public var identity: String
        public var leaseDuration: Duration = .seconds(15)
        public var renewDeadline: Duration = .seconds(10)
        public var retryPeriod: Duration = .seconds(2)
        /// Give the lease up on graceful shutdown so a successor need not wait it out.
        public var releaseOnCancel = true

        public init(leaseName: String, namespace: String, identity: String? = nil) {
            self.leaseName = leaseName
            self.namespace = namespace
            self.identity = identity ?? "\(ProcessInfo.processInfo.hostName)_\(UUID().uuidString.prefix(8).lowercased())"
        }

        func validate() throws(LeaderElectionError) {
            guard leaseDuration > renewDeadline else { throw .invalidConfiguration("leaseDuration must be greater than renewDeadline") }
            guard renewDeadline > retryPeriod * 1.2 else { throw .invalidConfiguration("renewDeadline must be greater than retryPeriod × 1.2") }
            guard retryPeriod > .zero else { throw .invalidConfiguration("retryPeriod must be positive") }
            guard !identity.isEmpty else { throw .invalidConfiguration("identity must not be empty") }
        }
    }

    public let client: KubeClient
    public let configuration: Configuration
    private let lock = NSLock()
    private var observedRecord: JSONValue?
    private var observedTime = ContinuousClock.now
    private var leading = false

    /// `client` gives the connection; elections use a client of their own without rate limiting or
    /// retries (client-go's advice), so that controller traffic never delays a renewal and each
    /// attempt ends within the renew deadline.
    public init(client: KubeClient, configuration: Configuration) {
        var own = client.configuration
        own.qps = 0
        own.maxRetries = 0
        own.requestTimeout = configuration.renewDeadline
        own.connectTimeout = min(own.connectTimeout, configuration.renewDeadline)
        self.client = KubeClient(connection: client.connection, configuration: own)
        self.configuration = configuration
    }

    /// Whether this candidate holds the lease now.
    public var isLeader: Bool { lock.withLock { leading } }

    /// Waits to become leader, then runs `work` while leading. Returns when the task is cancelled
    /// (graceful shutdown: `work` is cancelled, then the lease is released); throws
    /// `LeaderElectionError.leadershipLost` if the lease could not be renewed in time (`work` is
    /// cancelled first — the caller should exit, as client-go's controllers do).
    public func run(_ work: @escaping @Sendable () async throws -> Void) async throws {
        try configuration.validate()
        // Acquire. An acquisition counts from when its request started (others may have seen the
        // new record from then on), and only if it answered within the renew deadline.
        var acquiredAt = ContinuousClock.now
        while true {
            if Task.isCancelled { return }
            let started = ContinuousClock.now
            if await attempt(within: configuration.renewDeadline), ContinuousClock.now - started < configuration.renewDeadline {
                acquiredAt = started
                break
            }
            do { try await Task.sleep(for: configuration.retryPeriod * Double.random(in: 1.0...1.2)) } catch { return }
        }
        lock.withLock { leading = true }
        let acquired = acquiredAt
        let outcome: Result<Void, Error> = await withTaskGroup(of: Result<Void, Error>?.self) { group in
            group.addTask {
                do { try await work(); return .success(()) } catch { return .failure(error) }
            }
            group.addTask { [self] in
                if await renewWhileLeading(since: acquired) { return nil }
                // Not leading from this instant, even if `work` takes a while to notice its cancellation.
                lock.withLock { leading = false }
                return .failure(LeaderElectionError.leadershipLost(identity: configuration.identity))
            }
            // Whichever ends first (work returned, renewal failed, or cancellation) ends the other.
            var result: Result<Void, Error> = .success(())
            if let first = await group.next() { result = first ?? .success(()) }
            group.cancelAll()
            return result
        }
        lock.withLock { leading = false }
        let cancelled = Task.isCancelled
        // The release runs in a task of its own: this one is cancelled, and so would be its request.
        if configuration.releaseOnCancel, cancelled || (try? outcome.get()) != nil {
            await Task { await self.attemptRelease() }.value
        }
        if cancelled { return }
        try outcome.get()
    }

    /// Renews every retry period; returns true on cancellation, false when no renewal succeeded
    /// within the renew deadline. Each attempt is cut off at the deadline, and a renewal counts from
    /// when its request started (others cannot have seen it earlier), so the leader always steps
    /// down before another candidate's lease-duration wait can end.
    private func renewWhileLeading(since acquired: ContinuousClock.Instant) async -> Bool {
        var lastRenewal = acquired
        while true {
            do { try await Task.sleep(for: configuration.retryPeriod) } catch { return true }
            let started = ContinuousClock.now
            let remaining = lastRenewal + configuration.renewDeadline - started
            guard remaining > .zero else { return false }
            if await attempt(within: remaining) {
                lastRenewal = started
            } else if ContinuousClock.now - lastRenewal >= configuration.renewDeadline - configuration.retryPeriod {
                return Task.isCancelled
            }
            if Task.isCancelled { return true }
        }
    }

    /// `tryAcquireOrRenew`, given up (and its request cancelled) after `limit`.
    private func attempt(within limit: Duration) async -> Bool {
        await withTaskGroup(of: Bool?.self) { group in
            group.addTask { [self] in await tryAcquireOrRenew() }
            group.addTask {
                try? await Task.sleep(for: limit)
                return nil
            }
            let first = await group.next() ?? nil
            group.cancelAll()
            return first ?? false
        }
    }

    /// One attempt (client-go's `tryAcquireOrRenew`).
    func tryAcquireOrRenew() async -> Bool {
        let now = Self.microTime(Date())
        let durationSeconds = Int(configuration.leaseDuration.components.seconds)
        let lease: KubeObject
        do {
            lease = try await client.get(.leases, configuration.leaseName, namespace: configuration.namespace)
        } catch let error as KubeAPIError where error.reason == .notFound {
            let spec: JSONValue = ["holderIdentity": .string(configuration.identity), "leaseDurationSeconds": .int(durationSeconds),
                                   "acquireTime": .string(now), "renewTime": .string(now), "leaseTransitions": 0]
            do {
                let created = try await client.create(.leases, KubeObject(.leases, name: configuration.leaseName,
                                                                         namespace: configuration.namespace, fields: ["spec": spec]))
                observe(created["spec"] ?? spec)
                return true
            } catch { return false }
        } catch {
            return false
        }
        let record = lease["spec"] ?? [:]
        let holder = record["holderIdentity"]?.string ?? ""
        let recordDuration = Duration.seconds(record["leaseDurationSeconds"]?.int ?? durationSeconds)
        let observedAt = lock.withLock { () -> ContinuousClock.Instant in
            if observedRecord != record {
                observedRecord = record
                observedTime = .now
            }
            return observedTime
        }
        if !holder.isEmpty, holder != configuration.identity, observedAt + recordDuration > .now { return false }

        var spec = record
        if holder == configuration.identity {
            spec["acquireTime"] = record["acquireTime"] ?? .string(now)
        } else {
            spec["acquireTime"] = .string(now)
            spec["leaseTransitions"] = .int((record["leaseTransitions"]?.int ?? 0) + 1)
        }
        spec["holderIdentity"] = .string(configuration.identity)
        spec["leaseDurationSeconds"] = .int(durationSeconds)
        spec["renewTime"] = .string(now)
        var updated = lease
        updated["spec"] = spec
        do {
            let stored = try await client.update(.leases, updated)  // carries the read resourceVersion: a race is a 409
            observe(stored["spec"] ?? spec)
            return true
        } catch {
            return false
        }
    }

    private func observe(_ record: JSONValue) {
        lock.withLock {
            observedRecord = record
            observedTime = .now
        }
    }

    /// `release`, given up after the renew deadline.
    private func attemptRelease() async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { [self] in await release() }
            group.addTask { [self] in try? await Task.sleep(for: configuration.renewDeadline) }
            await group.next()
            group.cancelAll()
        }
    }

    /// Gives the lease up (client-go's release: empty holder, 1 s duration), if still held.
    private func release() async {
        guard let lease = try? await client.get(.leases, configuration.leaseName, namespace: configuration.namespace),
              lease[path: "spec", "holderIdentity"]?.string == configuration.identity else { return }
        var released = lease
        let now = Self.microTime(Date())
        released[path: "spec", "holderIdentity"] = ""
        released[path: "spec", "leaseDurationSeconds"] = 1
        released[path: "spec", "renewTime"] = .string(now)
        released[path: "spec", "acquireTime"] = .string(now)
        _ = try? await client.update(.leases, released)
    }

    /// `metav1.MicroTime`: RFC 3339 with microseconds, UTC.
    static func microTime(_ date: Date) -> String {
        let seconds = floor(date.timeIntervalSince1970)
        let micros = Int((date.timeIntervalSince1970 - seconds) * 1_000_000)
        var components = gmtime_r_components(time_t(seconds))
        components.micros = micros
        return components.formatted
    }
}

/// Why leader election stopped.
public enum LeaderElectionError: Error, CustomStringConvertible, Sendable, Equatable {
    /// The lease could not be renewed within the renew deadline: someone else may lead now.
    case leadershipLost(identity: String)
    case invalidConfiguration(String)

    public var description: String {
        switch self {
        case .leadershipLost(let identity): "leader election lost: \(identity) could not renew its lease in time"
        case .invalidConfiguration(let message): "invalid leader election configuration: \(message)"
        }
    }
}

/// Calendar fields of a UTC time, formatted without a shared formatter (thread-safe, allocation-light).
private struct UTCComponents {
    var year = 0, month = 0, day = 0, hour = 0, minute = 0, second = 0, micros = 0
    var formatted: String {
        func pad(_ value: Int, _ width: Int) -> String {
            let text = String(value)
            return String(repeating: "0", count: max(0, width - text.count)) + text
        }
        return "\(pad(year, 4))-\(pad(month, 2))-\(pad(day, 2))T\(pad(hour, 2)):\(pad(minute, 2)):\(pad(second, 2)).\(pad(micros, 6))Z"
    }
}

private func gmtime_r_components(_ time: time_t) -> UTCComponents {
    var value = time
    var fields = tm()
    gmtime_r(&value, &fields)
    return UTCComponents(year: Int(fields.tm_year) + 1900, month: Int(fields.tm_mon) + 1, day: Int(fields.tm_mday),
                         hour: Int(fields.tm_hour), minute: Int(fields.tm_min), second: Int(fields.tm_sec))
}
