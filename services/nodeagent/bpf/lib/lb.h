/* lb: service load balancing maps and the per-packet helpers shared by the pod programs
 * (lib/lb_hook.h) and the underlay program (bpf_nodeport.c).
 *
 * A frontend (VIP, port, protocol) names a service; its backend comes from the service's
 * Maglev table (slot = hash(5-tuple) % table size), except that an established flow keeps
 * the backend recorded in lb_ct, and sessionAffinity ClientIP reuses the client's last
 * backend while the affinity entry is fresh. Addresses and ports are in network byte order.
 */
#ifndef CILIA_LB_H
#define CILIA_LB_H

#include "types.h"
#include "parse.h"

/* lb_svc_value.flags */
#define LB_SVC_F_AFFINITY 0x1 /* sessionAffinity: ClientIP */
#define LB_SVC_F_EXTERNAL 0x2 /* reachable from outside the cluster (NodePort, LB IP, externalIP) */
#define LB_SVC_F_DSR 0x4      /* external traffic to remote backends: direct server return */
/* lb_backend_value.flags */
#define LB_BE_F_LOCAL 0x1       /* the backend runs on this node */
#define LB_BE_F_TERMINATING 0x2 /* keeps its flows, takes no new session-affinity clients */
/* lb_ct_key.kind */
#define LB_CT_SERVICE 1 /* client -> frontend: the chosen backend */
#define LB_CT_REVNAT 2  /* backend -> client: restore the frontend as the source */
#define LB_CT_SNAT 3    /* backend -> this node:port (SNAT): restore client dest, frontend source */
#define LB_CT_SNAT_FWD 4 /* client -> backend (SNAT): the source port allocated to the flow */
/* lb_ct_value.flags */
#define LB_CT_F_HAIRPIN 0x1 /* REVNAT of a pod reaching itself through a service */
/* Source of hairpin traffic (a pod whose service chose itself), Cilium's IPV4_LOOPBACK. */
#define LB_HAIRPIN_IP 0xa9fe2a01 /* 169.254.42.1, host byte order */
/* Drop reason (Cilium's number): a frontend whose service has no backend. */
#define DROP_NO_SERVICE 158
/* DSR: the frontend travels to the backend's node in an IPv4 option (as Cilium does). */
#define DSR_OPT_TYPE 0x9a /* copied flag | option number 26 */
#define DSR_OPT_LEN 8

struct lb_svc_key {
	u32 addr;
	u16 dport;
	u8 proto;
	u8 pad;
};

struct lb_svc_value {
	u32 svc_id;
	u32 affinity_timeout; /* seconds; 0 = no session affinity */
	u32 table_int;        /* Maglev table base slot for traffic from pods (size 1: backend id) */
	u32 table_ext;        /* same for traffic from outside (may be local backends only) */
	u32 size_int;         /* slots of table_int; 0 = no backend */
	u32 size_ext;
	u8 flags;
	u8 pad[3];
};

/* lb_maglev is one array of slots; a table of size M > 1 occupies M consecutive slots
 * from its base (lb_svc_value.table_*). A table of size 1 has no slots: its table_* field
 * is the backend id itself. */
struct lb_maglev_value {
	u32 backend_id;
};

struct lb_backend_key {
	u32 id;
};

struct lb_backend_value {
	u32 addr;
	u16 port;
	u8 proto;
	u8 flags;
};

struct lb_ct_key {
	u32 saddr;
	u32 daddr;
	u16 sport;
	u16 dport;
	u8 proto;
	u8 kind;
	u16 pad;
};

struct lb_ct_value {
	u64 last_ns;
	u32 backend_id; /* SERVICE: the backend */
	u32 svc_id;
	u32 addr;  /* REVNAT: frontend address; SNAT: client address */
	u32 addr2; /* SNAT: frontend address */
	u16 port;  /* REVNAT: frontend port; SNAT: client port */
	u16 port2; /* SNAT: frontend port */
	u32 flags;
};

struct lb_affinity_key {
	u32 client;
	u32 svc_id;
};

struct lb_affinity_value {
	u64 last_ns;
	u32 backend_id;
	u32 pad;
};

/* lb_config.flags */
#define LB_CFG_F_DSR 0x1 /* CILIA_LB_MODE=dsr: honour the DSR option from cluster nodes */

/* Node settings the underlay program needs (one entry, index 0). */
struct lb_config {
	u32 node_ip; /* source address of SNAT'd traffic to remote backends */
	u32 flags;
	u16 snat_port_min; /* SNAT source ports are allocated from [min, max] (host order) */
	u16 snat_port_max;
};

/* The underlay MAC address of a cluster node (from its Node object): a frame from it may
 * carry a DSR option. */
struct lb_node_mac_key {
	u8 mac[6];
	u16 pad;
};

struct lb_node_mac_value {
	u32 node_ip; /* network byte order; informational */
};

#ifndef CILIA_STRUCTS_ONLY

#define LB_NS_PER_SEC 1000000000ULL
#define LB_IP_SRC_OFF (ETH_HLEN + offsetof(struct iphdr, saddr))
#define LB_IP_DST_OFF (ETH_HLEN + offsetof(struct iphdr, daddr))
#define LB_IP_CSUM_OFF (ETH_HLEN + offsetof(struct iphdr, check))
#define LB_TCP_CSUM_OFF 16
#define LB_UDP_CSUM_OFF 6

BPF_TABLE_PINNED("hash", struct lb_svc_key, struct lb_svc_value, cilia_lb_services,
		 CILIA_LB_SERVICES_MAX, CILIA_PIN_DIR "/lb_services", BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("hash", struct lb_backend_key, struct lb_backend_value, cilia_lb_backends,
		 CILIA_LB_BACKENDS_MAX, CILIA_PIN_DIR "/lb_backends", BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("array", u32, struct lb_maglev_value, cilia_lb_maglev, CILIA_LB_MAGLEV_MAX,
		 CILIA_PIN_DIR "/lb_maglev_slots", 0);
BPF_TABLE_PINNED("lru_hash", struct lb_ct_key, struct lb_ct_value, cilia_lb_ct,
		 CILIA_LB_CT_MAX, CILIA_PIN_DIR "/lb_ct", 0);
BPF_TABLE_PINNED("lru_hash", struct lb_affinity_key, struct lb_affinity_value,
		 cilia_lb_affinity, CILIA_LB_AFFINITY_MAX, CILIA_PIN_DIR "/lb_affinity", 0);
BPF_TABLE_PINNED("array", u32, struct lb_config, cilia_lb_config, 1,
		 CILIA_PIN_DIR "/lb_config", 0);
BPF_TABLE_PINNED("hash", struct lb_node_mac_key, struct lb_node_mac_value, cilia_lb_node_macs,
		 CILIA_LB_NODES_MAX, CILIA_PIN_DIR "/lb_node_macs", BPF_F_NO_PREALLOC);

static __always_inline int lb_is_l4(const struct flow_tuple *t)
{
	return t->proto == CILIA_IPPROTO_TCP || t->proto == CILIA_IPPROTO_UDP;
}

static __always_inline int lb_is_syn(const struct flow_tuple *t)
{
	return t->proto == CILIA_IPPROTO_TCP && (t->tcp_flags & 0x12) == 0x02;
}

/* Mark an entry used (coarsely, so steady traffic does not write it on every packet). */
static __always_inline void lb_touch(struct lb_ct_value *v, u64 now)
{
	if (now - v->last_ns > LB_NS_PER_SEC)
		v->last_ns = now;
}

static __always_inline struct lb_svc_value *lb_frontend(const struct flow_tuple *t)
{
	struct lb_svc_key key = { .addr = t->daddr, .dport = t->dport, .proto = t->proto };

	if (!lb_is_l4(t))
		return 0;
	return cilia_lb_services.lookup(&key);
}

/* Flow hash for the Maglev slot (murmur3's finaliser over the mixed tuple). */
static __always_inline u32 lb_hash(const struct flow_tuple *t)
{
	u32 h = t->saddr * 0x9e3779b1u;

	h ^= t->daddr + 0x7f4a7c15u + (h << 6) + (h >> 2);
	h ^= (((u32)t->sport << 16) | t->dport) + 0x7f4a7c15u + (h << 6) + (h >> 2);
	h ^= t->proto;
	h ^= h >> 16;
	h *= 0x85ebca6bu;
	h ^= h >> 13;
	h *= 0xc2b2ae35u;
	h ^= h >> 16;
	return h;
}

static __always_inline u32 lb_maglev_pick(const struct flow_tuple *t, u32 table, u32 size)
{
	struct lb_maglev_value *v;
	u32 slot;

	if (size <= 1)
		return size ? table : 0;
	slot = table + lb_hash(t) % size;
	v = cilia_lb_maglev.lookup(&slot);
	return v ? v->backend_id : 0;
}

/* The backend of a flow to @svc (from outside if @ext): the flow's own LB conntrack entry,
 * else the client's affinity entry, else the Maglev table. Records the choice. Returns NULL
 * when the service has no backend. */
static __always_inline struct lb_backend_value *lb_pick(const struct flow_tuple *t,
							 const struct lb_svc_value *svc, u8 ext,
							 u64 now, u32 *bid_out)
{
	struct lb_ct_key ck = {
		.saddr = t->saddr, .daddr = t->daddr, .sport = t->sport, .dport = t->dport,
		.proto = t->proto, .kind = LB_CT_SERVICE,
	};
	struct lb_affinity_key ak = { .client = t->saddr, .svc_id = (svc->svc_id << 1) | ext };
	struct lb_ct_value nv = { .last_ns = now, .svc_id = svc->svc_id };
	struct lb_backend_key bk = {};
	struct lb_backend_value *be;
	struct lb_affinity_value *av;
	struct lb_ct_value *cv;
	u32 size = ext ? svc->size_ext : svc->size_int;

	cv = cilia_lb_ct.lookup(&ck);
	if (cv && cv->svc_id == svc->svc_id && !lb_is_syn(t)) {
		bk.id = cv->backend_id;
		be = cilia_lb_backends.lookup(&bk);
		if (be) {
			lb_touch(cv, now);
			*bid_out = bk.id;
			return be;
		}
	}
	if (size == 0)
		return 0;
	if (svc->flags & LB_SVC_F_AFFINITY) {
		av = cilia_lb_affinity.lookup(&ak);
		if (av && now - av->last_ns < (u64)svc->affinity_timeout * LB_NS_PER_SEC) {
			bk.id = av->backend_id;
			be = cilia_lb_backends.lookup(&bk);
			if (be && !(be->flags & LB_BE_F_TERMINATING))
				goto chosen;
		}
	}
	bk.id = lb_maglev_pick(t, ext ? svc->table_ext : svc->table_int, size);
	be = cilia_lb_backends.lookup(&bk);
	if (!be)
		return 0;
chosen:
	if (svc->flags & LB_SVC_F_AFFINITY) {
		struct lb_affinity_value na = { .last_ns = now, .backend_id = bk.id };

		cilia_lb_affinity.update(&ak, &na);
	}
	nv.backend_id = bk.id;
	cilia_lb_ct.update(&ck, &nv);
	*bid_out = bk.id;
	return be;
}

/* Remember how to undo the translation on the backend's replies. */
static __always_inline void lb_record_revnat(const struct flow_tuple *t,
					     const struct lb_backend_value *be, u64 now)
{
	struct lb_ct_key rk = {
		.saddr = be->addr, .daddr = t->saddr, .sport = be->port, .dport = t->sport,
		.proto = t->proto, .kind = LB_CT_REVNAT,
	};
	struct lb_ct_value rv = { .last_ns = now, .addr = t->daddr, .port = t->dport };

	cilia_lb_ct.update(&rk, &rv);
}

/* A pod reaching itself through a service: its packet leaves as HAIRPIN -> pod (so the pod
 * does not see its own address as the source), and two entries undo that: the pod's reply
 * (pod:bport -> HAIRPIN:cport) gets the frontend as source and the pod as destination, and
 * that translated reply (frontend -> pod:cport) is presented to conntrack and policy as the
 * pod talking to itself. */
static __always_inline void lb_record_hairpin(const struct flow_tuple *t,
					      const struct lb_backend_value *be, u64 now)
{
	struct lb_ct_key rk = {
		.saddr = be->addr, .daddr = bpf_htonl(LB_HAIRPIN_IP), .sport = be->port,
		.dport = t->sport, .proto = t->proto, .kind = LB_CT_REVNAT,
	};
	struct lb_ct_value rv = { .last_ns = now, .addr = t->daddr, .port = t->dport,
				  .addr2 = t->saddr };
	struct lb_ct_key hk = {
		.saddr = t->daddr, .daddr = t->saddr, .sport = t->dport, .dport = t->sport,
		.proto = t->proto, .kind = LB_CT_REVNAT,
	};
	struct lb_ct_value hv = { .last_ns = now, .addr = be->addr, .port = be->port,
				  .flags = LB_CT_F_HAIRPIN };

	cilia_lb_ct.update(&rk, &rv);
	cilia_lb_ct.update(&hk, &hv);
}

static __always_inline int lb_l4_off(struct __sk_buff *skb, u32 *off)
{
	u8 vihl;

	if (bpf_skb_load_bytes(skb, ETH_HLEN, &vihl, 1) < 0)
		return -1;
	*off = ETH_HLEN + (vihl & 0xf) * 4;
	return 0;
}

static __always_inline u32 lb_csum_off(u8 proto)
{
	return proto == CILIA_IPPROTO_TCP ? LB_TCP_CSUM_OFF : LB_UDP_CSUM_OFF;
}

static __always_inline u64 lb_csum_flags(u8 proto)
{
	/* A zero UDP checksum means "none" and must stay zero. */
	return proto == CILIA_IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
}

/* Rewrite the source (@dst = 0) or destination address and port, fixing both checksums. */
static __always_inline int lb_rewrite(struct __sk_buff *skb, u8 proto, int dst, u32 old_addr,
				      u32 new_addr, u16 old_port, u16 new_port)
{
	u32 l4_off, csum;

	if (lb_l4_off(skb, &l4_off) < 0)
		return -1;
	csum = l4_off + lb_csum_off(proto);
	if (old_addr != new_addr) {
		if (bpf_l4_csum_replace(skb, csum, old_addr, new_addr,
					BPF_F_PSEUDO_HDR | sizeof(new_addr) | lb_csum_flags(proto)) < 0)
			return -1;
		if (bpf_l3_csum_replace(skb, LB_IP_CSUM_OFF, old_addr, new_addr,
					sizeof(new_addr)) < 0)
			return -1;
		if (bpf_skb_store_bytes(skb, dst ? LB_IP_DST_OFF : LB_IP_SRC_OFF, &new_addr,
					sizeof(new_addr), 0) < 0)
			return -1;
	}
	if (old_port != new_port) {
		if (bpf_l4_csum_replace(skb, csum, old_port, new_port,
					sizeof(new_port) | lb_csum_flags(proto)) < 0)
			return -1;
		if (bpf_skb_store_bytes(skb, l4_off + (dst ? 2 : 0), &new_port, sizeof(new_port),
					0) < 0)
			return -1;
	}
	return 0;
}

#endif /* CILIA_STRUCTS_ONLY */
#endif /* CILIA_LB_H */
