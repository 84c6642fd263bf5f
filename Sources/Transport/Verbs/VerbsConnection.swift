import CVerbs

#if canImport(Glibc)
import Glibc
#endif

/// A reliable-connected queue pair with its own completion queue: set up here (INIT on creation,
/// RTR and RTS in `connect(to:)` once the peer's endpoint came through the TCP handshake). The
/// hot path that posts on it is `VerbsPeer`. `close()` must be called; `deinit` asserts it.
public final class VerbsConnection: @unchecked Sendable {
    /// Send-queue depth; writes are signalled at least every half of it so that the queue drains.
    static let depth: UInt32 = 128
    /// Writes up to this size are inlined (the flag lines), sparing the NIC a DMA read.
    static let inlineBytes: UInt32 = 64

    public let context: VerbsContext
    let completionQueue: UnsafeMutablePointer<ibv_cq>
    let queuePair: UnsafeMutablePointer<ibv_qp>
    /// Our starting packet sequence number.
    let psn: UInt32
    private var closed = false

    /// How long an unacknowledged write is retried: `4.096 µs × 2^timeout`, `retries` times.
    let timeout: UInt8
    let retries: UInt8

    /// Creates the queue pair and moves it to INIT, ready for RDMA writes from the peer.
    /// - Parameter quickGiveUp: a server's queue pairs give up on a vanished client within about
    ///   70 ms (timeout 16.8 ms × 4 tries) rather than the 4 s a client allows a busy server.
    public init(context: VerbsContext, quickGiveUp: Bool = false) throws {
        self.context = context
        timeout = quickGiveUp ? 12 : 17
        retries = quickGiveUp ? 3 : 7
        guard let cq = ibv_create_cq(context.context, Int32(Self.depth), nil, nil, 0) else { throw Verbs.failure("ibv_create_cq", context.name) }
        completionQueue = cq
        var initial = ibv_qp_init_attr()
        initial.send_cq = cq
        initial.recv_cq = cq
        initial.qp_type = IBV_QPT_RC
        initial.sq_sig_all = 0
        initial.cap.max_send_wr = Self.depth
        initial.cap.max_recv_wr = 1
        initial.cap.max_send_sge = 1
        initial.cap.max_recv_sge = 1
        initial.cap.max_inline_data = Self.inlineBytes
        guard let qp = ibv_create_qp(context.protectionDomain, &initial) else {
            ibv_destroy_cq(cq)
            throw Verbs.failure("ibv_create_qp", context.name)
        }
        queuePair = qp
        psn = UInt32.random(in: 0..<(1 << 24))
        var attributes = ibv_qp_attr()
        attributes.qp_state = IBV_QPS_INIT
        attributes.pkey_index = 0
        attributes.port_num = context.options.port
        attributes.qp_access_flags = IBV_ACCESS_REMOTE_WRITE.rawValue | IBV_ACCESS_LOCAL_WRITE.rawValue
        let mask = IBV_QP_STATE.rawValue | IBV_QP_PKEY_INDEX.rawValue | IBV_QP_PORT.rawValue | IBV_QP_ACCESS_FLAGS.rawValue
        let status = ibv_modify_qp(qp, &attributes, Int32(mask))
        guard status == 0 else {
            ibv_destroy_qp(qp)
            ibv_destroy_cq(cq)
            throw Verbs.failure("ibv_modify_qp(INIT)", context.name, code: status)
        }
    }

    /// What the peer needs to reach this queue pair and write into `memory` from `address` on
    /// (`length` bytes laid out as one slot of `layout`'s capacities).
    public func endpoint(memory: VerbsMemory, address: UnsafeMutableRawPointer, length: Int, layout: SlotLayout) -> VerbsEndpoint {
        VerbsEndpoint(lid: context.lid, gid: context.gid, qpn: queuePair.pointee.qp_num, psn: psn, mtu: UInt8(context.mtu.rawValue),
                      rkey: memory.remoteKey, address: UInt64(UInt(bitPattern: address)), length: UInt64(length),
                      requestCapacity: UInt64(layout.requestCapacity), responseCapacity: UInt64(layout.responseCapacity))
    }

    /// Connects to the peer's queue pair: INIT → RTR (receive) → RTS (send).
    public func connect(to remote: VerbsEndpoint) throws {
        var rtr = ibv_qp_attr()
        rtr.qp_state = IBV_QPS_RTR
        rtr.path_mtu = ibv_mtu(rawValue: min(UInt32(remote.mtu), context.mtu.rawValue))
        rtr.dest_qp_num = remote.qpn
        rtr.rq_psn = remote.psn
        rtr.max_dest_rd_atomic = 1
        rtr.min_rnr_timer = 12
        rtr.ah_attr.dlid = remote.lid
        rtr.ah_attr.sl = 0
        rtr.ah_attr.src_path_bits = 0
        rtr.ah_attr.port_num = context.options.port
        if context.usesGlobalRoute || remote.lid == 0 {
            rtr.ah_attr.is_global = 1
            withUnsafeMutableBytes(of: &rtr.ah_attr.grh.dgid.raw) { $0.copyBytes(from: remote.gid) }
            rtr.ah_attr.grh.sgid_index = UInt8(context.options.gidIndex)
            rtr.ah_attr.grh.hop_limit = 64  // RoCE v2 across routers
        }
        let rtrMask = IBV_QP_STATE.rawValue | IBV_QP_AV.rawValue | IBV_QP_PATH_MTU.rawValue | IBV_QP_DEST_QPN.rawValue
            | IBV_QP_RQ_PSN.rawValue | IBV_QP_MAX_DEST_RD_ATOMIC.rawValue | IBV_QP_MIN_RNR_TIMER.rawValue
        try Verbs.check(ibv_modify_qp(queuePair, &rtr, Int32(rtrMask)), "ibv_modify_qp(RTR)", context.name)
        var rts = ibv_qp_attr()
        rts.qp_state = IBV_QPS_RTS
        rts.timeout = timeout
        rts.retry_cnt = retries
        rts.rnr_retry = retries
        rts.sq_psn = psn
        rts.max_rd_atomic = 1
        let rtsMask = IBV_QP_STATE.rawValue | IBV_QP_TIMEOUT.rawValue | IBV_QP_RETRY_CNT.rawValue | IBV_QP_RNR_RETRY.rawValue
            | IBV_QP_SQ_PSN.rawValue | IBV_QP_MAX_QP_RD_ATOMIC.rawValue
        try Verbs.check(ibv_modify_qp(queuePair, &rts, Int32(rtsMask)), "ibv_modify_qp(RTS)", context.name)
    }

    /// Destroys the queue pair and its completion queue.
    public func close() {
        guard !closed else { return }
        closed = true
        ibv_destroy_qp(queuePair)
        ibv_destroy_cq(completionQueue)
    }

    deinit {
        assert(closed, "VerbsConnection was not closed")
        if !closed { close() }
    }
}
