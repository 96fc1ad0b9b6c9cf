/* Programs on the node's VXLAN device (collect-metadata / "external" mode).
 *
 * cil_to_overlay runs on tc egress: the kernel routed a packet to a remote pod CIDR into the
 * tunnel; the program picks the remote node (the ipcache's tunnel endpoint of the destination,
 * else the gateway of the kernel's route, which is the remote node's address) and puts the
 * source's security identity in the VNI.
 * cil_from_overlay runs on tc ingress, after decapsulation: it reads the VNI and hands the
 * identity to the destination pod's cil_to_pod in skb->mark (lib/overlay.h). It passes every
 * decapsulated frame it cannot parse: it only labels packets, and the destination pod's
 * cil_to_pod drops what it cannot classify (the node's own traffic keeps working).
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>

#include "lib/types.h"
#include "lib/parse.h"
#include "lib/ipcache.h"
#include "lib/endpoints.h"
#include "lib/events.h"
#include "lib/overlay.h"

/* The identity of a packet's source on the sending node: a local pod's, else the ipcache's
 * (the node's own addresses are host there). */
static __always_inline u32 local_source_identity(u32 saddr)
{
	struct endpoint_value *ep = endpoint_lookup(saddr);

	return ep ? ep->identity : ipcache_identity(saddr);
}

/* The node that the kernel's route into this tunnel names for @t's destination (the route's
 * gateway is the remote node's address), for destinations the ipcache does not know (yet);
 * 0 when there is none. Network byte order. */
static __always_inline u32 route_tunnel_endpoint(struct __sk_buff *skb,
						 const struct flow_tuple *t)
{
	struct bpf_fib_lookup fib = {};

	fib.family = OVERLAY_AF_INET;
	fib.ipv4_src = t->saddr;
	fib.ipv4_dst = t->daddr;
	fib.ifindex = skb->ifindex; /* an output lookup: only routes through this device */
	if (bpf_fib_lookup(skb, &fib, sizeof(fib), BPF_FIB_LOOKUP_DIRECT | BPF_FIB_LOOKUP_OUTPUT)
	    != BPF_FIB_LKUP_RET_SUCCESS)
		return 0;
	if (fib.ifindex != skb->ifindex || fib.ipv4_dst == t->daddr)
		return 0; /* not through this tunnel, or no gateway */
	return fib.ipv4_dst;
}

int cil_to_overlay(struct __sk_buff *skb)
{
	struct bpf_tunnel_key key = {};
	struct ipcache_key ck = { .prefixlen = 32 };
	struct ipcache_value *dst;
	struct flow_tuple t = {};
	struct pkt_info pi = {};
	u32 src_id, remote;
	int ret;

	/* Nothing but IPv4 is routed into the tunnel: anything else is dropped, counted. Later
	 * fragments need no ports here (only addresses), so they go through as they are. */
	ret = parse_packet(skb, &t, &pi);
	if (ret != PARSE_OK) {
		emit_flow(skb, &t, CILIA_DIR_EGRESS, FLOW_VERDICT_DROPPED,
			  ret < 0 ? -ret : DROP_UNKNOWN_L3, CILIA_ID_UNKNOWN, CILIA_ID_UNKNOWN, 0);
		return TC_ACT_SHOT;
	}
	src_id = local_source_identity(t.saddr);
	ck.addr = t.daddr;
	dst = cilia_ipcache.lookup(&ck);
	remote = dst ? dst->tunnel_endpoint : 0;
	if (!remote)
		remote = route_tunnel_endpoint(skb, &t);
	if (!remote) {
		emit_flow(skb, &t, CILIA_DIR_EGRESS, FLOW_VERDICT_DROPPED, DROP_NO_TUNNEL_ENDPOINT,
			  src_id, dst ? dst->identity : CILIA_ID_WORLD, 0);
		return TC_ACT_SHOT;
	}
	key.tunnel_id = overlay_vni(src_id);
	key.remote_ipv4 = bpf_ntohl(remote);
	key.tunnel_ttl = OVERLAY_TTL;
	if (bpf_skb_set_tunnel_key(skb, &key, sizeof(key), BPF_F_ZERO_CSUM_TX) < 0)
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}

int cil_from_overlay(struct __sk_buff *skb)
{
	struct bpf_tunnel_key key = {};
	u32 id;

	skb->mark = 0;
	if (bpf_skb_get_tunnel_key(skb, &key, sizeof(key), 0) < 0)
		return TC_ACT_SHOT;
	/* Trust the VNI only from a node of the cluster; anything else is resolved from the
	 * ipcache as without a tunnel. */
	if (ipcache_identity(bpf_htonl(key.remote_ipv4)) != CILIA_ID_REMOTE_NODE)
		return TC_ACT_OK;
	id = key.tunnel_id;
	if (id == CILIA_ID_HOST)
		id = CILIA_ID_REMOTE_NODE; /* the sender's host is a remote node here */
	if (id != CILIA_ID_UNKNOWN)
		skb->mark = identity_mark(id);
	return TC_ACT_OK;
}
