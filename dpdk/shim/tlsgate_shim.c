/*
 * tlsgate_shim.c - see tlsgate_shim.h. One line per wrapper, no logic,
 * except the page-tiled mbuf pool for af_xdp and its layout check.
 */
/* rte_cpuset_t is cpu_set_t, which glibc declares only with _GNU_SOURCE. */
#define _GNU_SOURCE
#include <unistd.h>
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

static void free_memzone(struct rte_mempool_memhdr *memhdr __rte_unused, void *opaque)
{
	rte_memzone_free(opaque);
}

/* Populates `mp` with `n` objects of `object_size` bytes from one memzone
 * that starts on a page boundary (IOVA-contiguous, so a NIC may share the
 * pool): DPDK's default populate starts at a cache-line boundary, which
 * leaves the last object past the region af_xdp registers. */
static int populate_page_aligned(struct rte_mempool *mp, unsigned n,
                                 unsigned object_size, int socket_id)
{
	char name[RTE_MEMZONE_NAMESIZE];
	size_t len = (size_t)n * object_size;
	if (snprintf(name, sizeof(name), "MP_%s_tiled", mp->name) >= (int)sizeof(name))
		return -ENAMETOOLONG;
	const struct rte_memzone *mz = rte_memzone_reserve_aligned(
		name, len, socket_id, RTE_MEMZONE_IOVA_CONTIG, object_size);
	if (mz == NULL)
		return -rte_errno;
	int ret = rte_mempool_populate_iova(mp, mz->addr, mz->iova, len, free_memzone,
	                                    (void *)(uintptr_t)mz);
	if (ret < 0) {
		rte_memzone_free(mz);
		return ret;
	}
	return (unsigned)ret == n ? 0 : -ENOMEM;
}

struct rte_mempool *tg_pktmbuf_pool_create_tiled(const char *name, unsigned n,
                                                 unsigned cache_size,
                                                 unsigned object_size,
                                                 int socket_id)
{
	/* The header is one cache line; NO_SPREAD keeps the object size as
	 * given (no padding to spread objects over memory channels). */
	unsigned header = RTE_CACHE_LINE_SIZE;
	if (object_size <= header + sizeof(struct rte_mbuf) + RTE_PKTMBUF_HEADROOM ||
	    object_size - header - sizeof(struct rte_mbuf) > UINT16_MAX) {
		rte_errno = EINVAL;
		return NULL;
	}
	struct rte_pktmbuf_pool_private priv = {
		.mbuf_data_room_size = (uint16_t)(object_size - header - sizeof(struct rte_mbuf)),
		.mbuf_priv_size = 0,
	};
	struct rte_mempool *mp = rte_mempool_create_empty(
		name, n, object_size - header, cache_size, sizeof(priv), socket_id,
		RTE_MEMPOOL_F_NO_SPREAD);
	if (mp == NULL)
		return NULL;
	int ret = rte_mempool_set_ops_byname(mp, rte_mbuf_best_mempool_ops(), NULL);
	if (ret == 0) {
		rte_pktmbuf_pool_init(mp, &priv);
		ret = populate_page_aligned(mp, n, object_size, socket_id);
	}
	if (ret < 0) {
		rte_mempool_free(mp);
		rte_errno = -ret;
		return NULL;
	}
	rte_mempool_obj_iter(mp, rte_pktmbuf_init, NULL);
	return mp;
}

struct object_span {
	uintptr_t lowest;
	uintptr_t highest;
};

static void widen_span(struct rte_mempool *mp __rte_unused, void *opaque,
                       void *obj, unsigned idx __rte_unused)
{
	struct object_span *span = opaque;
	uintptr_t addr = (uintptr_t)obj;
	if (addr < span->lowest)
		span->lowest = addr;
	if (addr > span->highest)
		span->highest = addr;
}

int tg_mempool_is_one_region(struct rte_mempool *mp)
{
	/* As the af_xdp driver computes its UMEM: from the page holding the
	 * first memory chunk, the pool's size times its object size plus the
	 * chunk's offset in that page. */
	struct object_span span = { UINTPTR_MAX, 0 };
	struct rte_mempool_memhdr *first = STAILQ_FIRST(&mp->mem_list);
	uint64_t size = rte_mempool_calc_obj_size(mp->elt_size, mp->flags, NULL);
	if (first == NULL || rte_mempool_obj_iter(mp, widen_span, &span) == 0)
		return 0;
	uintptr_t start = (uintptr_t)first->addr;
	uintptr_t base = start & ~((uintptr_t)getpagesize() - 1);
	uint64_t end = (uint64_t)start + (uint64_t)mp->populated_size * size;
	return span.lowest - mp->header_size >= base &&
	       (uint64_t)(span.highest - mp->header_size) + size <= end;
}

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
