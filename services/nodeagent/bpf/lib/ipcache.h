/* ipcache: IPv4 prefix -> security identity and the node that hosts it. */
#ifndef CILIA_IPCACHE_H
#define CILIA_IPCACHE_H

#include "types.h"

/* LPM trie key: prefixlen counts bits of addr (network byte order). */
struct ipcache_key {
	u32 prefixlen;
	u32 addr;
};

struct ipcache_value {
	u32 identity;
	u32 tunnel_endpoint; /* IPv4 of the hosting node, network byte order; 0 = local/none */
	u8 flags;
	u8 pad[3];
};

#ifndef CILIA_STRUCTS_ONLY

BPF_TABLE_PINNED("lpm_trie", struct ipcache_key, struct ipcache_value, cilia_ipcache,
		 CILIA_IPCACHE_MAX, CILIA_PIN_DIR "/ipcache", BPF_F_NO_PREALLOC);

/* The identity of @addr; addresses the ipcache does not know are world. */
static __always_inline u32 ipcache_identity(u32 addr)
{
	struct ipcache_key key = { .prefixlen = 32, .addr = addr };
	struct ipcache_value *val = cilia_ipcache.lookup(&key);

	return val ? val->identity : CILIA_ID_WORLD;
}

#endif /* CILIA_STRUCTS_ONLY */
#endif /* CILIA_IPCACHE_H */
