import CVerbs

/// The verbs hot path: a `SlotPeer` whose pushes are RDMA WRITEs from our registered copy of a
/// slot into the peer's copy, on one queue pair. Nothing here allocates: the work request and its
/// scatter entry live on the stack, and the memory was registered once at connection time.
///
/// Writes on one RC queue pair are placed in order, so a payload written before its flag is in
/// the peer's memory when the peer sees the flag. A write is signalled when the caller settles it
/// (and at least every half queue, so the send queue drains); the push then polls the completion
/// queue until that write is acknowledged, after which every earlier write has left our memory.
public final class VerbsPeer: SlotPeer {
    let connection: VerbsConnection
    /// Our copy of the slot, and the peer's.
    let localBase: UnsafeMutableRawPointer
    let localKey: UInt32
    let remoteAddress: UInt64
    let remoteKey: UInt32
    let remoteLength: Int
    private var unsignaled: UInt32 = 0
    private var posted: UInt64 = 0

    /// - Parameters:
    ///   - localBase: start of our copy of the slot, inside `memory`.
    ///   - remote: the peer's endpoint (its slot's address, length and key).
    public init(connection: VerbsConnection, memory: VerbsMemory, localBase: UnsafeMutableRawPointer, remote: VerbsEndpoint) {
        self.connection = connection
        self.localBase = localBase
        localKey = memory.localKey
        remoteAddress = remote.address
        remoteKey = remote.rkey
        remoteLength = Int(remote.length)
    }

    public func push(offset: Int, count: Int, settle: Bool) throws {
        guard count > 0 else { return }
        precondition(offset >= 0 && offset + count <= remoteLength, "push outside the peer's slot")
        posted += 1
        let signaled = settle || unsignaled + 1 >= VerbsConnection.depth / 2
        var entry = ibv_sge(addr: UInt64(UInt(bitPattern: localBase + offset)), length: UInt32(count), lkey: localKey)
        var request = ibv_send_wr()
        request.wr_id = posted
        request.num_sge = 1
        request.opcode = IBV_WR_RDMA_WRITE
        var flags: UInt32 = 0
        if signaled { flags |= IBV_SEND_SIGNALED.rawValue }
        if count <= Int(VerbsConnection.inlineBytes) { flags |= IBV_SEND_INLINE.rawValue }
        request.send_flags = flags
        request.wr.rdma.remote_addr = remoteAddress + UInt64(offset)
        request.wr.rdma.rkey = remoteKey
        var bad: UnsafeMutablePointer<ibv_send_wr>?
        let status = withUnsafeMutablePointer(to: &entry) { sge in
            request.sg_list = sge
            return eaas_ibv_post_send(connection.queuePair, &request, &bad)
        }
        try Verbs.check(status, "ibv_post_send(RDMA_WRITE \(count) B)", connection.context.name)
        guard signaled else {
            unsignaled += 1
            return
        }
        unsignaled = 0
        try awaitCompletion(of: posted)
    }

    /// Polls the completion queue until write `id` completes; fails on an error completion or
    /// when the peer stops acknowledging (the queue pair's retries are exhausted first).
    private func awaitCompletion(of id: UInt64) throws {
        var completion = ibv_wc()
        var backoff = Backoff()
        let clock = ContinuousClock()
        let deadline = clock.now + .seconds(30)
        while true {
            let n = eaas_ibv_poll_cq(connection.completionQueue, 1, &completion)
            if n < 0 { throw Verbs.failure("ibv_poll_cq", connection.context.name, code: -n) }
            if n == 1 {
                guard completion.status == IBV_WC_SUCCESS else {
                    throw TransportError.unreachable(address: connection.context.name,
                                                     reason: "RDMA write failed: \(String(cString: ibv_wc_status_str(completion.status)))")
                }
                if completion.wr_id == id { return }
                continue
            }
            if clock.now >= deadline { throw TransportError.unreachable(address: connection.context.name, reason: "RDMA write not acknowledged within 30 s") }
            backoff.pause()
        }
    }
}
