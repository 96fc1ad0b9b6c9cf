/* frag: the ports of IPv4 fragments after the first (Cilium's fragment map).
 *
 * Only the first fragment of a datagram carries the L4 header. It records its ports under
 * (source, destination, IP id, protocol); later fragments of the same datagram take their
 * ports from that entry, so that conntrack and policy see them as the flow they belong to. A
 * later fragment whose first fragment was not seen (lost, reordered, or forged alone) is
 * dropped with DROP_FRAG_NOT_FOUND. Entries are not deleted by the datapath (fragments may
 * come out of order); the map is an LRU.
 */
#ifndef CILIA_FRAG_H
#define CILIA_FRAG_H

#include "types.h"
#include "parse.h"

struct frag_key {
	u32 saddr;
	u32 daddr;
	u16 id; /* network byte order */
	u8 proto;
	u8 pad;
};

struct frag_value {
	u16 sport; /* network byte order */
	u16 dport;
};

#ifndef CILIA_STRUCTS_ONLY

BPF_TABLE_PINNED("lru_hash", struct frag_key, struct frag_value, cilia_frag, CILIA_FRAG_MAX,
		 CILIA_PIN_DIR "/fragments", 0);

/* Remember the ports of a first fragment. */
static __always_inline void frag_record(const struct flow_tuple *t, u16 id)
{
	struct frag_key key = { .saddr = t->saddr, .daddr = t->daddr, .id = id,
				.proto = t->proto };
	struct frag_value val = { .sport = t->sport, .dport = t->dport };

	cilia_frag.update(&key, &val);
}

/* Fill the ports of a later fragment from its first fragment; -1 when it is unknown. */
static __always_inline int frag_ports(struct flow_tuple *t, u16 id)
{
	struct frag_key key = { .saddr = t->saddr, .daddr = t->daddr, .id = id,
				.proto = t->proto };
	struct frag_value *val = cilia_frag.lookup(&key);

	if (!val)
		return -1;
	t->sport = val->sport;
	t->dport = val->dport;
	return 0;
}

#endif /* CILIA_STRUCTS_ONLY */
#endif /* CILIA_FRAG_H */
