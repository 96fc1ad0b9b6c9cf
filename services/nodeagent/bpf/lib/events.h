/* events: verdicts of new and dropped flows, pushed to a pinned ring buffer. */
#ifndef CILIA_EVENTS_H
#define CILIA_EVENTS_H

#include "types.h"
#include "metrics.h"

#define FLOW_VERDICT_FORWARDED 1
#define FLOW_VERDICT_DROPPED 2

/* Forward reasons (below 128). */
#define FLOW_REASON_POLICY_ALLOWED 1 /* a policy entry allowed the new flow */
#define FLOW_REASON_NOT_ENFORCED 2   /* the endpoint does not enforce this direction */
/* Drop reasons, with Cilium's numbers. */
#define DROP_INVALID_SOURCE 132 /* source address is not the endpoint behind this veth */
#define DROP_POLICY 133         /* default deny: no policy entry allows the flow */
#define DROP_NO_LXC 152         /* no endpoint behind this veth for the destination */
#define DROP_POLICY_DENY 181    /* a deny entry matched */

struct flow_event {
	u64 timestamp_ns; /* bpf_ktime_get_ns() */
	u32 src_identity;
	u32 dst_identity;
	u32 saddr; /* network byte order */
	u32 daddr; /* network byte order */
	u16 sport; /* network byte order */
	u16 dport; /* network byte order */
	u32 ifindex;
	u8 verdict;
	u8 reason;
	u8 proto;
	u8 direction;
	u8 tcp_flags;
	u8 pad;
	u16 endpoint_id;
};

#ifndef CILIA_STRUCTS_ONLY

/* BPF_RINGBUF_OUTPUT, but pinned so that a restarted agent reads the same buffer. */
struct cilia_events_table_t {
	int key;
	u32 leaf;
	int (*ringbuf_output)(void *, u64, u64);
	void *(*ringbuf_reserve)(u64);
	void (*ringbuf_discard)(void *, u64);
	void (*ringbuf_submit)(void *, u64);
	u32 max_entries;
};
__attribute__((section("maps/ringbuf:" CILIA_PIN_DIR "/events")))
struct cilia_events_table_t cilia_events = { .max_entries = CILIA_EVENTS_BYTES };

static __always_inline void emit_flow(struct __sk_buff *skb, const struct flow_tuple *t,
				      u8 dir, u8 verdict, u8 reason, u32 src_id, u32 dst_id,
				      u16 endpoint_id)
{
	struct flow_event ev = {
		.timestamp_ns = bpf_ktime_get_ns(),
		.src_identity = src_id,
		.dst_identity = dst_id,
		.saddr = t->saddr,
		.daddr = t->daddr,
		.sport = t->sport,
		.dport = t->dport,
		.ifindex = skb->ifindex,
		.verdict = verdict,
		.reason = reason,
		.proto = t->proto,
		.direction = dir,
		.tcp_flags = t->tcp_flags,
		.endpoint_id = endpoint_id,
	};

	metrics_count(((u32)reason << 1) | dir, skb->len);
	if (cilia_events.ringbuf_output(&ev, sizeof(ev), 0) < 0)
		metrics_count(METRICS_SLOT_EVENTS_LOST, 0);
}

#endif /* CILIA_STRUCTS_ONLY */
#endif /* CILIA_EVENTS_H */
