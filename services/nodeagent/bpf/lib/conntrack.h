/* conntrack: replies of allowed flows pass without a policy lookup, and so do ICMP errors
 * related to them; forward packets of established flows are policy-checked again by the
 * caller on every packet (as Cilium does), so a policy change reaches open connections.
 *
 * An entry is keyed by the original tuple and the policy direction that admitted it (egress
 * at the client's veth, ingress at the server's veth). A packet matches its own entry
 * (established) or the reverse tuple of the opposite direction (reply). Entries carry an
 * absolute expiry in bpf_ktime_get_ns (CLOCK_MONOTONIC) time; an expired entry is a miss and
 * userspace garbage-collects them (the map is also LRU so it never fills up hard).
 */
#ifndef CILIA_CONNTRACK_H
#define CILIA_CONNTRACK_H

#include "types.h"
#include "parse.h"

#define CT_F_SEEN_REPLY 0x1
#define CT_F_CLOSING 0x2

struct ct_key {
	u32 saddr;
	u32 daddr;
	u16 sport;
	u16 dport;
	u8 proto;
	u8 direction;
	u16 pad;
};

struct ct_value {
	u64 expires_ns; /* bpf_ktime_get_ns() deadline */
	u64 created_ns;
	u8 flags;
	u8 pad[7];
};

#ifndef CILIA_STRUCTS_ONLY

#define CT_NEW 0
#define CT_ESTABLISHED 1
#define CT_REPLY 2
#define CT_RELATED 3

#define CT_TCP_FIN 0x01
#define CT_TCP_SYN 0x02
#define CT_TCP_RST 0x04
#define CT_TCP_ACK 0x10
#define CT_NS_PER_SEC 1000000000ULL

BPF_TABLE_PINNED("lru_hash", struct ct_key, struct ct_value, cilia_ct,
		 CILIA_CT_MAX, CILIA_PIN_DIR "/conntrack", 0);

static __always_inline u64 ct_lifetime(const struct flow_tuple *t, u8 flags)
{
	if (t->proto != CILIA_IPPROTO_TCP)
		return CILIA_CT_LIFETIME_NONTCP * CT_NS_PER_SEC;
	if (flags & CT_F_CLOSING)
		return CILIA_CT_LIFETIME_CLOSE * CT_NS_PER_SEC;
	if (flags & CT_F_SEEN_REPLY)
		return CILIA_CT_LIFETIME_TCP * CT_NS_PER_SEC;
	return CILIA_CT_LIFETIME_SYN * CT_NS_PER_SEC;
}

/* Extend an entry hit by a packet; writes only when the deadline moves by more than the
 * refresh granularity, so steady traffic does not write the entry on every packet. */
static __always_inline void ct_refresh(struct ct_value *v, const struct flow_tuple *t,
				       u8 add_flags, u64 now)
{
	u8 flags = v->flags | add_flags;
	u64 deadline;

	if (t->proto == CILIA_IPPROTO_TCP && (t->tcp_flags & (CT_TCP_FIN | CT_TCP_RST)))
		flags |= CT_F_CLOSING;
	deadline = now + ct_lifetime(t, flags);
	if (flags != v->flags)
		v->flags = flags;
	if (deadline < v->expires_ns ||
	    deadline - v->expires_ns > CILIA_CT_REFRESH_MS * (CT_NS_PER_SEC / 1000))
		v->expires_ns = deadline;
}

static __always_inline int ct_reopens(const struct ct_value *v, const struct flow_tuple *t)
{
	/* A fresh SYN on a closing entry starts a new connection: decide policy again. */
	return (v->flags & CT_F_CLOSING) && t->proto == CILIA_IPPROTO_TCP &&
	       (t->tcp_flags & (CT_TCP_SYN | CT_TCP_ACK)) == CT_TCP_SYN;
}

static __always_inline int ct_lookup(const struct flow_tuple *t, u8 dir, u64 now)
{
	struct ct_key fwd = {
		.saddr = t->saddr, .daddr = t->daddr, .sport = t->sport, .dport = t->dport,
		.proto = t->proto, .direction = dir,
	};
	struct ct_key rev = {
		.saddr = t->daddr, .daddr = t->saddr, .sport = t->dport, .dport = t->sport,
		.proto = t->proto, .direction = dir ^ 1,
	};
	struct ct_value *v;

	v = cilia_ct.lookup(&fwd);
	if (v && v->expires_ns > now && !ct_reopens(v, t)) {
		ct_refresh(v, t, 0, now);
		return CT_ESTABLISHED;
	}
	v = cilia_ct.lookup(&rev);
	if (v && v->expires_ns > now) {
		ct_refresh(v, t, CT_F_SEEN_REPLY, now);
		return CT_REPLY;
	}
	return CT_NEW;
}

static __always_inline int ct_live(const struct ct_key *key, u64 now)
{
	struct ct_value *v = cilia_ct.lookup(key);

	return v && v->expires_ns > now;
}

/* CT_RELATED when an ICMP error quoting @inner (a packet that crossed this veth the other
 * way) belongs to a tracked connection, in either of its directions; else CT_NEW. */
static __always_inline int ct_related(const struct flow_tuple *inner, u8 dir, u64 now)
{
	struct ct_key sent = {
		.saddr = inner->saddr, .daddr = inner->daddr, .sport = inner->sport,
		.dport = inner->dport, .proto = inner->proto, .direction = dir ^ 1,
	};
	struct ct_key answered = {
		.saddr = inner->daddr, .daddr = inner->saddr, .sport = inner->dport,
		.dport = inner->sport, .proto = inner->proto, .direction = dir,
	};

	return ct_live(&sent, now) || ct_live(&answered, now) ? CT_RELATED : CT_NEW;
}

static __always_inline void ct_create(const struct flow_tuple *t, u8 dir, u64 now)
{
	struct ct_key key = {
		.saddr = t->saddr, .daddr = t->daddr, .sport = t->sport, .dport = t->dport,
		.proto = t->proto, .direction = dir,
	};
	struct ct_value val = { .created_ns = now };

	val.expires_ns = now + ct_lifetime(t, 0);
	cilia_ct.update(&key, &val);
}

#endif /* CILIA_STRUCTS_ONLY */
#endif /* CILIA_CONNTRACK_H */
