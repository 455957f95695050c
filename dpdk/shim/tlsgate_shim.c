/*
 * tlsgate_shim.c - see tlsgate_shim.h. One line per wrapper, no logic.
 */
/* rte_cpuset_t is cpu_set_t, which glibc declares only with _GNU_SOURCE. */
#define _GNU_SOURCE
#include "tlsgate_shim.h"

int tg_rte_errno(void) { return rte_errno; }

unsigned tg_lcore_id(void) { return rte_lcore_id(); }

int tg_pin_thread_to_lcore(unsigned lcore)
{
	rte_cpuset_t cpus = rte_lcore_cpuset(lcore);
	return rte_thread_set_affinity(&cpus);
}
int tg_socket_id(void) { return (int)rte_socket_id(); }

uint16_t tg_eth_rx_burst(uint16_t port_id, uint16_t queue_id,
                         struct rte_mbuf **rx_pkts, uint16_t nb_pkts)
{
	return rte_eth_rx_burst(port_id, queue_id, rx_pkts, nb_pkts);
}

uint16_t tg_eth_tx_burst(uint16_t port_id, uint16_t queue_id,
                         struct rte_mbuf **tx_pkts, uint16_t nb_pkts)
{
	return rte_eth_tx_burst(port_id, queue_id, tx_pkts, nb_pkts);
}

struct rte_mbuf *tg_pktmbuf_alloc(struct rte_mempool *mp) { return rte_pktmbuf_alloc(mp); }
void tg_pktmbuf_free(struct rte_mbuf *m) { rte_pktmbuf_free(m); }

uint8_t *tg_pktmbuf_data(struct rte_mbuf *m) { return rte_pktmbuf_mtod(m, uint8_t *); }
uint16_t tg_pktmbuf_data_len(const struct rte_mbuf *m) { return rte_pktmbuf_data_len(m); }
uint32_t tg_pktmbuf_pkt_len(const struct rte_mbuf *m) { return rte_pktmbuf_pkt_len(m); }
uint16_t tg_pktmbuf_nb_segs(const struct rte_mbuf *m) { return m->nb_segs; }
uint16_t tg_pktmbuf_headroom(const struct rte_mbuf *m) { return rte_pktmbuf_headroom(m); }
uint16_t tg_pktmbuf_tailroom(const struct rte_mbuf *m) { return rte_pktmbuf_tailroom(m); }

char *tg_pktmbuf_append(struct rte_mbuf *m, uint16_t len) { return rte_pktmbuf_append(m, len); }
char *tg_pktmbuf_prepend(struct rte_mbuf *m, uint16_t len) { return rte_pktmbuf_prepend(m, len); }
char *tg_pktmbuf_adj(struct rte_mbuf *m, uint16_t len) { return rte_pktmbuf_adj(m, len); }
int tg_pktmbuf_trim(struct rte_mbuf *m, uint16_t len) { return rte_pktmbuf_trim(m, len); }

int tg_pktmbuf_linearize(struct rte_mbuf *m) { return rte_pktmbuf_linearize(m); }

unsigned tg_ring_enqueue_burst(struct rte_ring *r, struct rte_mbuf *const *objs,
                               unsigned n)
{
	return rte_ring_enqueue_burst(r, (void *const *)objs, n, NULL);
}

unsigned tg_ring_dequeue_burst(struct rte_ring *r, struct rte_mbuf **objs,
                               unsigned n)
{
	return rte_ring_dequeue_burst(r, (void **)objs, n, NULL);
}

unsigned tg_ring_count(const struct rte_ring *r) { return rte_ring_count(r); }
unsigned tg_ring_capacity(const struct rte_ring *r) { return rte_ring_get_capacity(r); }
