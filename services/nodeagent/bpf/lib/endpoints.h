/* endpoints: local pod IPv4 -> endpoint id, identity, host-side ifindex, enforcement. */
#ifndef CILIA_ENDPOINTS_H
#define CILIA_ENDPOINTS_H

#include "types.h"

/* Per-direction default deny is on only when the endpoint's flag for that direction is set. */
#define ENDPOINT_F_ENFORCE_INGRESS 0x1
#define ENDPOINT_F_ENFORCE_EGRESS 0x2
/* Its DNS queries go through the node's DNS proxy (lib/proxy.h). */
#define ENDPOINT_F_DNS_PROXY 0x4

struct endpoint_key {
	u32 addr; /* network byte order */
};

struct endpoint_value {
	u32 identity;
	u32 ifindex; /* host-side veth in the node namespace; 0 = do not check */
	u16 endpoint_id;
	u8 flags;
	u8 pad;
};

#ifndef CILIA_STRUCTS_ONLY

BPF_TABLE_PINNED("hash", struct endpoint_key, struct endpoint_value, cilia_endpoints,
		 CILIA_ENDPOINTS_MAX, CILIA_PIN_DIR "/endpoints", BPF_F_NO_PREALLOC);

static __always_inline struct endpoint_value *endpoint_lookup(u32 addr)
{
	struct endpoint_key key = { .addr = addr };

	return cilia_endpoints.lookup(&key);
}

static __always_inline int endpoint_enforces(const struct endpoint_value *ep, u8 dir)
{
	u8 flag = dir == CILIA_DIR_EGRESS ? ENDPOINT_F_ENFORCE_EGRESS : ENDPOINT_F_ENFORCE_INGRESS;

	return (ep->flags & flag) != 0;
}

#endif /* CILIA_STRUCTS_ONLY */
#endif /* CILIA_ENDPOINTS_H */
