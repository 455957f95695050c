/*
 * tlsgate_shim.h - exported wrappers for DPDK's `static inline` functions.
 *
 * bindgen cannot bind `static inline` functions: they have no symbol in the
 * shared libraries. Each wrapper here is a real function that calls exactly
 * one inline (or reads one mbuf field), so the Rust side stays a thin FFI.
 */
#ifndef TLSGATE_SHIM_H
#define TLSGATE_SHIM_H

#include <stdint.h>
#include <rte_config.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_ethdev.h>
#include <rte_lcore.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>
#include <rte_mbuf_pool_ops.h>
#include <rte_memzone.h>
#include <rte_ring.h>
#include <rte_thread.h>

/* The calling thread's rte_errno (a per-lcore thread-local variable). */
int tg_rte_errno(void);

unsigned tg_lcore_id(void);

/* Pins the calling thread to the CPUs of EAL lcore `lcore`; 0 on success. */
int tg_pin_thread_to_lcore(unsigned lcore);
int tg_socket_id(void);

uint16_t tg_eth_rx_burst(uint16_t port_id, uint16_t queue_id,
                         struct rte_mbuf **rx_pkts, uint16_t nb_pkts);
uint16_t tg_eth_tx_burst(uint16_t port_id, uint16_t queue_id,
                         struct rte_mbuf **tx_pkts, uint16_t nb_pkts);

struct rte_mbuf *tg_pktmbuf_alloc(struct rte_mempool *mp);

/* An mbuf pool like rte_pktmbuf_pool_create's, except that each object
 * (mempool header, mbuf, data room) is exactly `object_size` bytes, a divisor
 * of the page size, with no padding between objects: the pool tiles its pages
 * without gaps. NULL (rte_errno set) on failure. */
struct rte_mempool *tg_pktmbuf_pool_create_tiled(const char *name, unsigned n,
                                                 unsigned cache_size,
                                                 unsigned object_size,
                                                 int socket_id);
/* Whether every object of `mp` lies within populated_size x object size bytes
 * from its first object: the region the af_xdp driver registers as its UMEM
 * (an mbuf outside it is refused by the kernel and never comes back). */
int tg_mempool_is_one_region(struct rte_mempool *mp);
void tg_pktmbuf_free(struct rte_mbuf *m);

/* Pointer to the first data byte of the first segment. */
uint8_t *tg_pktmbuf_data(struct rte_mbuf *m);
uint16_t tg_pktmbuf_data_len(const struct rte_mbuf *m);
uint32_t tg_pktmbuf_pkt_len(const struct rte_mbuf *m);
uint16_t tg_pktmbuf_nb_segs(const struct rte_mbuf *m);
uint16_t tg_pktmbuf_headroom(const struct rte_mbuf *m);
uint16_t tg_pktmbuf_tailroom(const struct rte_mbuf *m);

/* Grow/shrink the packet; NULL / -1 when there is no room. */
char *tg_pktmbuf_append(struct rte_mbuf *m, uint16_t len);
char *tg_pktmbuf_prepend(struct rte_mbuf *m, uint16_t len);
char *tg_pktmbuf_adj(struct rte_mbuf *m, uint16_t len);
int tg_pktmbuf_trim(struct rte_mbuf *m, uint16_t len);

/* Copies a multi-segment mbuf into one linear segment; 0 on success. */
int tg_pktmbuf_linearize(struct rte_mbuf *m);

/*
 * rte_ring of mbuf pointers (rte_ring_create/rte_ring_free are real
 * functions; these are inline). Enqueue/dequeue up to n; return how many.
 */
unsigned tg_ring_enqueue_burst(struct rte_ring *r, struct rte_mbuf *const *objs,
                               unsigned n);
unsigned tg_ring_dequeue_burst(struct rte_ring *r, struct rte_mbuf **objs,
                               unsigned n);
unsigned tg_ring_count(const struct rte_ring *r);
unsigned tg_ring_capacity(const struct rte_ring *r);

#endif
