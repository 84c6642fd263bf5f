import CVerbs

/// The verbs hot path: a `SlotPeer` whose pushes are RDMA WRITEs from our registered copy of a
/// slot into the peer's copy, on one queue pair. Nothing here allocates: the work request and its
/// scatter entry live on the stack, and the memory was registered once at connection time.
///
/// Ordering: the payload and then the flag are RDMA WRITEs on one RC queue pair, which the
/// responder executes in order; we rely, as FaRM, HERD and most one-sided RPC systems do, on the
/// responder's NIC making them visible to its CPU in that order too (true of InfiniBand and RoCE
/// NICs with relaxed ordering off, which is how this code registers memory). A write is signalled
/// when the caller settles it (and at least every half queue, so the send queue drains). Its
/// completion is reaped at the start of the next push, not waited for at once: a server answering
/// many clients from one thread never stalls on one slow or vanished peer until it writes to
/// that peer again.
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
    /// The signalled write not yet known to be complete.
    private var awaited: UInt64?

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
        if let id = awaited {
            try awaitCompletion(of: id)
            awaited = nil
        }
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
        // No message built unless the call failed: the hot path does not allocate.
        guard status == 0 else { throw Verbs.failure("ibv_post_send(RDMA_WRITE)", connection.context.name, code: status) }
        guard signaled else {
            unsignaled += 1
            return
        }
        unsignaled = 0
        if settle {
            awaited = posted
        } else {
            try awaitCompletion(of: posted)  // a half-queue mark: the send queue must drain
        }
    }

    /// Polls the completion queue until write `id` completes; fails on an error completion or
    /// when the peer stops acknowledging (the queue pair's retries are exhausted first).
    private func awaitCompletion(of id: UInt64) throws {
        var completion = ibv_wc()
        var backoff = Backoff()
        let clock = ContinuousClock()
        let deadline = clock.now + .seconds(5)
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
            if clock.now >= deadline { throw TransportError.unreachable(address: connection.context.name, reason: "RDMA write not acknowledged within 5 s") }
            backoff.pause()
        }
    }
}
