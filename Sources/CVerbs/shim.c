#include "CVerbs.h"

struct ibv_mr *eaas_ibv_reg_mr(struct ibv_pd *pd, void *addr, size_t length, int access) {
    return ibv_reg_mr(pd, addr, length, access);
}
int eaas_ibv_query_port(struct ibv_context *context, uint8_t port, struct ibv_port_attr *attr) {
    return ibv_query_port(context, port, attr);
}
int eaas_ibv_post_send(struct ibv_qp *qp, struct ibv_send_wr *wr, struct ibv_send_wr **bad_wr) {
    return ibv_post_send(qp, wr, bad_wr);
}
int eaas_ibv_post_recv(struct ibv_qp *qp, struct ibv_recv_wr *wr, struct ibv_recv_wr **bad_wr) {
    return ibv_post_recv(qp, wr, bad_wr);
}
int eaas_ibv_poll_cq(struct ibv_cq *cq, int num_entries, struct ibv_wc *wc) {
    return ibv_poll_cq(cq, num_entries, wc);
}
