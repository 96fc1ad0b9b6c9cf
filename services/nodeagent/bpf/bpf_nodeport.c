/* Programs on a node's underlay-facing interface: NodePort, LoadBalancer and externalIP
 * frontends for clients outside the cluster (kube-proxy replacement).
 *
 * cil_from_netdev (tc ingress):
 *   - a packet to an external frontend gets a backend (Maglev, LB conntrack, affinity). A local
 *     backend is reached by DNAT alone. A remote backend is reached by DNAT + SNAT to this
 *     node's address and a source port allocated to the flow (default), or in DSR mode by
 *     DNAT with the frontend carried in an IPv4 option (on a TCP flow's SYN only), so that
 *     the backend's node answers the client directly. Rewritten packets for
 *     other nodes are redirected out through a FIB lookup (their source may be this node).
 *   - a reply to a SNAT'd flow gets the client back as destination, the frontend as source.
 *   - a DSR packet for a local backend records how to rewrite the backend's replies, in DSR
 *     mode only and only from a cluster node (its Ethernet source is in lb_node_macs); in DSR
 *     mode an option from anyone else is dropped (DROP_UNKNOWN_SENDER), in SNAT mode ignored.
 * cil_to_netdev (tc egress): replies of translated flows leave with the frontend as source.
 *
 * SNAT source ports (Cilium's NAT map): the first packet of a flow allocates a port of the
 * configured range for (node address, port, backend): the client's own port when it is in the
 * range and free, else random candidates, each claimed atomically (BPF_NOEXIST) in lb_ct. The
 * flow keeps it through two entries, one per direction (LB_CT_SNAT_FWD for the client's
 * packets, LB_CT_SNAT for the backend's replies). No free port after NP_SNAT_RETRIES
 * candidates: drop DROP_NAT_NO_MAPPING.
 *
 * The interface carries the node's own traffic too: what these programs cannot parse (ARP,
 * IPv6, VLAN, later IPv4 fragments, truncated headers) passes untouched, as they only
 * translate frontends and are not a policy enforcement point. Pod traffic is enforced on the
 * pods' veths, which fail closed.
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
#include "lib/lb.h"

#define NP_AF_INET 2
#define NP_IP_HLEN 20
#define NP_IP_WORDS_DSR ((NP_IP_HLEN + DSR_OPT_LEN) / 2)
#define NP_ETH_SOURCE_OFF 6 /* offset of the Ethernet source address */
#define NP_SNAT_RETRIES 32  /* port candidates tried before giving up (Cilium probes too) */
/* Drop reasons (Cilium's numbers). */
#define DROP_NAT_NO_MAPPING 167 /* no free SNAT source port */
#define DROP_UNKNOWN_SENDER 172 /* a DSR option from a host that is no cluster node */

/* The kernel's four-argument bpf_redirect_neigh (bcc declares an older three-argument form). */
static long (*np_redirect_neigh)(u32 ifindex, void *params, int plen, u64 flags) =
	(void *)BPF_FUNC_redirect_neigh;

struct dsr_opt {
	u8 type;
	u8 len;
	u16 port;
	u32 addr;
};

/* Send the packet to its (rewritten) destination through the FIB. */
static __always_inline int np_redirect(struct __sk_buff *skb, u32 saddr, u32 daddr)
{
	struct bpf_fib_lookup p = {};
	int ret;

	p.family = NP_AF_INET;
	p.ipv4_src = saddr;
	p.ipv4_dst = daddr;
	p.ifindex = skb->ingress_ifindex ? skb->ingress_ifindex : skb->ifindex;
	ret = bpf_fib_lookup(skb, &p, sizeof(p), 0);
	if (ret != BPF_FIB_LKUP_RET_SUCCESS && ret != BPF_FIB_LKUP_RET_NO_NEIGH)
		return TC_ACT_SHOT;
	return np_redirect_neigh(p.ifindex, 0, 0, 0);
}

/* Rewrite the IPv4 header checksum from scratch (after the header grew). */
static __always_inline int np_ip_csum(struct __sk_buff *skb, u32 words)
{
	u16 hdr[NP_IP_WORDS_DSR] = {};
	u32 sum = 0;
	u16 csum;
	int i;

	if (bpf_skb_load_bytes(skb, ETH_HLEN, hdr, sizeof(hdr)) < 0)
		return -1;
	hdr[5] = 0;
#pragma unroll
	for (i = 0; i < NP_IP_WORDS_DSR; i++)
		sum += hdr[i];
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	csum = ~sum;
	return bpf_skb_store_bytes(skb, LB_IP_CSUM_OFF, &csum, sizeof(csum), 0);
}

/* Insert the DSR option (frontend address and port) after the 20-byte IPv4 header. */
static __always_inline int np_dsr_add_opt(struct __sk_buff *skb, u32 addr, u16 port)
{
	struct dsr_opt opt = { .type = DSR_OPT_TYPE, .len = DSR_OPT_LEN, .port = port,
			       .addr = addr };
	u8 vihl;
	u16 tot_len;

	if (bpf_skb_load_bytes(skb, ETH_HLEN, &vihl, 1) < 0 || (vihl & 0xf) != 5)
		return -1;
	if (bpf_skb_load_bytes(skb, ETH_HLEN + 2, &tot_len, 2) < 0)
		return -1;
	if (bpf_skb_adjust_room(skb, DSR_OPT_LEN, BPF_ADJ_ROOM_NET,
				BPF_F_ADJ_ROOM_NO_CSUM_RESET) < 0)
		return -1;
	vihl = (vihl & 0xf0) | ((NP_IP_HLEN + DSR_OPT_LEN) / 4);
	tot_len = bpf_htons(bpf_ntohs(tot_len) + DSR_OPT_LEN);
	if (bpf_skb_store_bytes(skb, ETH_HLEN, &vihl, 1, 0) < 0 ||
	    bpf_skb_store_bytes(skb, ETH_HLEN + 2, &tot_len, 2, 0) < 0 ||
	    bpf_skb_store_bytes(skb, ETH_HLEN + NP_IP_HLEN, &opt, sizeof(opt), 0) < 0)
		return -1;
	return np_ip_csum(skb, NP_IP_WORDS_DSR);
}

/* The DSR option of a packet for a local backend: remember the frontend for the backend's
 * replies. Honoured only in DSR mode and only from a cluster node (the frame's Ethernet source
 * is a node's underlay MAC). 0 to go on, or a drop reason. */
static __always_inline int np_dsr_learn(struct __sk_buff *skb, const struct flow_tuple *t,
					const struct lb_config *cfg)
{
	struct lb_node_mac_key mk = {};
	struct dsr_opt opt;
	u8 vihl;

	if (bpf_skb_load_bytes(skb, ETH_HLEN, &vihl, 1) < 0 || (vihl & 0xf) < 7)
		return 0;
	if (bpf_skb_load_bytes(skb, ETH_HLEN + NP_IP_HLEN, &opt, sizeof(opt)) < 0)
		return 0;
	if (opt.type != DSR_OPT_TYPE || opt.len != DSR_OPT_LEN)
		return 0;
	if (!cfg || !(cfg->flags & LB_CFG_F_DSR))
		return 0; /* SNAT mode: the option means nothing here */
	if (bpf_skb_load_bytes(skb, NP_ETH_SOURCE_OFF, mk.mac, sizeof(mk.mac)) < 0 ||
	    !cilia_lb_node_macs.lookup(&mk))
		return DROP_UNKNOWN_SENDER;
	if (!endpoint_lookup(t->daddr))
		return 0;
	{
		struct lb_ct_key rk = {
			.saddr = t->daddr, .daddr = t->saddr, .sport = t->dport, .dport = t->sport,
			.proto = t->proto, .kind = LB_CT_REVNAT,
		};
		struct lb_ct_value rv = { .last_ns = bpf_ktime_get_ns(), .addr = opt.addr,
					  .port = opt.port };

		cilia_lb_ct.update(&rk, &rv);
	}
	return 0;
}

/* The SNAT source port (network order) of a flow to remote backend @be: the one it holds,
 * else a free one of the range, recorded in both directions. 0, or -1 when none is free. */
static __always_inline int np_snat_port(const struct flow_tuple *t,
					const struct lb_backend_value *be, u32 bid, u32 svc_id,
					const struct lb_config *cfg, u64 now, u16 *port)
{
	struct lb_ct_key fk = {
		.saddr = t->saddr, .daddr = be->addr, .sport = t->sport, .dport = be->port,
		.proto = t->proto, .kind = LB_CT_SNAT_FWD,
	};
	struct lb_ct_key rk = {
		.saddr = be->addr, .daddr = cfg->node_ip, .sport = be->port, .proto = t->proto,
		.kind = LB_CT_SNAT,
	};
	struct lb_ct_value rv = { .last_ns = now, .backend_id = bid, .svc_id = svc_id,
				  .addr = t->saddr, .port = t->sport, .addr2 = t->daddr,
				  .port2 = t->dport };
	struct lb_ct_value fv = { .last_ns = now, .backend_id = bid, .svc_id = svc_id,
				  .addr = cfg->node_ip };
	struct lb_ct_value *v, *r;
	u32 min = cfg->snat_port_min, max = cfg->snat_port_max, span, cand;
	int i;

	v = cilia_lb_ct.lookup(&fk);
	if (v) {
		lb_touch(v, now);
		rk.dport = v->port;
		r = cilia_lb_ct.lookup(&rk);
		if (r ? r->addr == t->saddr && r->port == t->sport
		      : cilia_lb_ct.insert(&rk, &rv) == 0) {
			*port = rk.dport; /* the flow's port (its reverse entry restored if evicted) */
			return 0;
		}
	}
	if (!min || max < min)
		return -1;
	span = max - min + 1;
	cand = bpf_ntohs(t->sport);
	if (cand < min || cand > max)
		cand = min + bpf_get_prandom_u32() % span;
	for (i = 0; i < NP_SNAT_RETRIES; i++) {
		rk.dport = bpf_htons(cand);
		if (cilia_lb_ct.insert(&rk, &rv) == 0) {
			fv.port = rk.dport;
			cilia_lb_ct.update(&fk, &fv);
			*port = rk.dport;
			return 0;
		}
		cand = min + bpf_get_prandom_u32() % span;
	}
	return -1;
}

/* A reply of a SNAT'd flow: back to the client, from the frontend. */
static __always_inline int np_snat_reply(struct __sk_buff *skb, const struct flow_tuple *t,
					 int *handled)
{
	struct lb_ct_key key = {
		.saddr = t->saddr, .daddr = t->daddr, .sport = t->sport, .dport = t->dport,
		.proto = t->proto, .kind = LB_CT_SNAT,
	};
	struct lb_ct_value *v = cilia_lb_ct.lookup(&key);
	u32 client, frontend;
	u16 cport, fport;

	*handled = 0;
	if (!v)
		return TC_ACT_OK;
	*handled = 1;
	lb_touch(v, bpf_ktime_get_ns());
	client = v->addr;
	cport = v->port;
	frontend = v->addr2;
	fport = v->port2;
	if (lb_rewrite(skb, t->proto, 1, t->daddr, client, t->dport, cport) < 0 ||
	    lb_rewrite(skb, t->proto, 0, t->saddr, frontend, t->sport, fport) < 0)
		return TC_ACT_SHOT;
	return np_redirect(skb, frontend, client);
}

int cil_from_netdev(struct __sk_buff *skb)
{
	struct flow_tuple t = {};
	struct lb_svc_value *svc;
	struct lb_backend_value *be;
	struct lb_config *cfg;
	u32 bid = 0, zero = 0;
	u16 nat_port;
	u64 now;
	int handled, ret;

	if (parse_ipv4(skb, &t) < 0 || !lb_is_l4(&t))
		return TC_ACT_OK;
	cfg = cilia_lb_config.lookup(&zero);
	ret = np_dsr_learn(skb, &t, cfg);
	if (ret) {
		emit_flow(skb, &t, CILIA_DIR_INGRESS, FLOW_VERDICT_DROPPED, ret,
			  ipcache_identity(t.saddr), ipcache_identity(t.daddr), 0);
		return TC_ACT_SHOT;
	}
	ret = np_snat_reply(skb, &t, &handled);
	if (handled)
		return ret;
	svc = lb_frontend(&t);
	if (!svc || !(svc->flags & LB_SVC_F_EXTERNAL))
		return TC_ACT_OK;
	now = bpf_ktime_get_ns();
	be = lb_pick(&t, svc, 1, now, &bid);
	if (!be) {
		emit_flow(skb, &t, CILIA_DIR_INGRESS, FLOW_VERDICT_DROPPED, DROP_NO_SERVICE,
			  ipcache_identity(t.saddr), CILIA_ID_UNKNOWN, 0);
		return TC_ACT_SHOT;
	}
	if (be->flags & LB_BE_F_LOCAL) {
		/* DNAT only; the kernel routes to the pod, replies leave via cil_to_netdev. */
		lb_record_revnat(&t, be, now);
		if (lb_rewrite(skb, t.proto, 1, t.daddr, be->addr, t.dport, be->port) < 0)
			return TC_ACT_SHOT;
		return TC_ACT_OK;
	}
	if (svc->flags & LB_SVC_F_DSR) {
		/* TCP carries the frontend on the SYN only (the backend's node remembers it), so
		 * data packets never grow beyond the MTU; UDP carries it on every packet. */
		if (lb_rewrite(skb, t.proto, 1, t.daddr, be->addr, t.dport, be->port) < 0)
			return TC_ACT_SHOT;
		if ((t.proto != CILIA_IPPROTO_TCP || lb_is_syn(&t)) &&
		    np_dsr_add_opt(skb, t.daddr, t.dport) < 0)
			return TC_ACT_SHOT;
		return np_redirect(skb, t.saddr, be->addr);
	}
	if (!cfg || !cfg->node_ip)
		return TC_ACT_SHOT;
	if (np_snat_port(&t, be, bid, svc->svc_id, cfg, now, &nat_port) < 0) {
		emit_flow(skb, &t, CILIA_DIR_INGRESS, FLOW_VERDICT_DROPPED, DROP_NAT_NO_MAPPING,
			  ipcache_identity(t.saddr), CILIA_ID_UNKNOWN, 0);
		return TC_ACT_SHOT;
	}
	if (lb_rewrite(skb, t.proto, 1, t.daddr, be->addr, t.dport, be->port) < 0 ||
	    lb_rewrite(skb, t.proto, 0, t.saddr, cfg->node_ip, t.sport, nat_port) < 0)
		return TC_ACT_SHOT;
	return np_redirect(skb, cfg->node_ip, be->addr);
}

int cil_to_netdev(struct __sk_buff *skb)
{
	struct flow_tuple t = {};
	struct lb_ct_key rk = {};
	struct lb_ct_value *rv;

	if (parse_ipv4(skb, &t) < 0 || !lb_is_l4(&t))
		return TC_ACT_OK;
	rk.saddr = t.saddr;
	rk.daddr = t.daddr;
	rk.sport = t.sport;
	rk.dport = t.dport;
	rk.proto = t.proto;
	rk.kind = LB_CT_REVNAT;
	rv = cilia_lb_ct.lookup(&rk);
	if (!rv)
		return TC_ACT_OK;
	lb_touch(rv, bpf_ktime_get_ns());
	if (lb_rewrite(skb, t.proto, 0, t.saddr, rv->addr, t.sport, rv->port) < 0)
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}
