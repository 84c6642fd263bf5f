// C shim for the Transport module: libibverbs. ibv_reg_mr and ibv_query_port are function-like
// macros in verbs.h that Swift does not see (it would bind to the compat symbols), so they get
// prefixed wrappers; the static inline post/poll functions are wrapped too so that every verbs call
// the Transport makes goes through one place.
#ifndef EAAS_CVERBS_H
#define EAAS_CVERBS_H

#include <infiniband/verbs.h>

struct ibv_mr *eaas_ibv_reg_mr(struct ibv_pd *pd, void *addr, size_t length, int access);
int eaas_ibv_query_port(struct ibv_context *context, uint8_t port, struct ibv_port_attr *attr);
int eaas_ibv_post_send(struct ibv_qp *qp, struct ibv_send_wr *wr, struct ibv_send_wr **bad_wr);
int eaas_ibv_post_recv(struct ibv_qp *qp, struct ibv_recv_wr *wr, struct ibv_recv_wr **bad_wr);
int eaas_ibv_poll_cq(struct ibv_cq *cq, int num_entries, struct ibv_wc *wc);

#endif
