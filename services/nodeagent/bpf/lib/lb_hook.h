/* Service translation on a pod's host-side veth.
 *
 * svc_translate() runs in cil_from_pod before egress policy: a packet to a service frontend
 * gets its destination rewritten to the chosen backend (DNAT with checksum fix-up) and @t is
 * updated, so policy and conntrack see the backend. A frontend without backends drops with
 * DROP_NO_SERVICE, reported as a flow event. svc_reverse_nat() runs in cil_to_pod: a reply of
 * a translated flow gets the frontend back as its source, so the client sees the VIP; @t is
 * deliberately left as the backend tuple, which is what conntrack recorded on the way out.
 * Both return 0, or a negative value to drop.
 */
#ifndef CILIA_LB_HOOK_H
#define CILIA_LB_HOOK_H

#include "parse.h"
#include "lb.h"

#ifndef CILIA_STRUCTS_ONLY

/* The reply of a pod to its own hairpin connection: from the frontend, to the pod. @t
 * becomes the pod talking to itself, the tuple conntrack recorded. */
static __always_inline int svc_hairpin_reply(struct __sk_buff *skb, struct flow_tuple *t)
{
	struct lb_ct_key rk = {
		.saddr = t->saddr, .daddr = t->daddr, .sport = t->sport, .dport = t->dport,
		.proto = t->proto, .kind = LB_CT_REVNAT,
	};
	struct lb_ct_value *rv = cilia_lb_ct.lookup(&rk);
	u32 pod;

	if (!rv || !lb_is_l4(t))
		return 0;
	lb_touch(rv, bpf_ktime_get_ns());
	pod = rv->addr2;
	if (lb_rewrite(skb, t->proto, 0, t->saddr, rv->addr, t->sport, rv->port) < 0 ||
	    lb_rewrite(skb, t->proto, 1, t->daddr, pod, t->dport, t->dport) < 0)
		return -1;
	t->daddr = pod;
	return 0;
}

static __always_inline int svc_translate(struct __sk_buff *skb, struct flow_tuple *t)
{
	struct lb_svc_value *svc = lb_frontend(t);
	struct lb_backend_value *be;
	struct endpoint_value *ep;
	u64 now;
	u32 bid = 0;

	if (!svc) {
		if (t->daddr == bpf_htonl(LB_HAIRPIN_IP))
			return svc_hairpin_reply(skb, t);
		/* A new connection straight to an address forgets an old translation of the same
		 * tuple, so its replies are not rewritten to a frontend. */
		if (lb_is_syn(t)) {
			struct lb_ct_key rk = {
				.saddr = t->daddr, .daddr = t->saddr, .sport = t->dport,
				.dport = t->sport, .proto = t->proto, .kind = LB_CT_REVNAT,
			};
			cilia_lb_ct.delete(&rk);
		}
		return 0;
	}
	now = bpf_ktime_get_ns();
	be = lb_pick(t, svc, 0, now, &bid);
	if (!be) {
		ep = endpoint_lookup(t->saddr);
		emit_flow(skb, t, CILIA_DIR_EGRESS, FLOW_VERDICT_DROPPED, DROP_NO_SERVICE,
			  ep ? ep->identity : CILIA_ID_UNKNOWN, CILIA_ID_UNKNOWN,
			  ep ? ep->endpoint_id : 0);
		return -1;
	}
	if (be->addr == t->saddr) {
		lb_record_hairpin(t, be, now);
		if (lb_rewrite(skb, t->proto, 0, t->saddr, bpf_htonl(LB_HAIRPIN_IP), t->sport,
			       t->sport) < 0)
			return -1;
	} else {
		lb_record_revnat(t, be, now);
	}
	if (lb_rewrite(skb, t->proto, 1, t->daddr, be->addr, t->dport, be->port) < 0)
		return -1;
	t->daddr = be->addr;
	t->dport = be->port;
	return 0;
}

static __always_inline int svc_reverse_nat(struct __sk_buff *skb, struct flow_tuple *t)
{
	struct lb_ct_key rk = {
		.saddr = t->saddr, .daddr = t->daddr, .sport = t->sport, .dport = t->dport,
		.proto = t->proto, .kind = LB_CT_REVNAT,
	};
	struct lb_ct_value *rv;

	if (!lb_is_l4(t))
		return 0;
	if (t->saddr == bpf_htonl(LB_HAIRPIN_IP)) {
		t->saddr = t->daddr;    /* hairpin: the pod reaching itself */
		return 0;
	}
	rv = cilia_lb_ct.lookup(&rk);
	if (!rv)
		return 0;
	lb_touch(rv, bpf_ktime_get_ns());
	if (rv->flags & LB_CT_F_HAIRPIN) {
		t->saddr = rv->addr;
		t->sport = rv->port;
		return 0;
	}
	return lb_rewrite(skb, t->proto, 0, t->saddr, rv->addr, t->sport, rv->port);
}

#endif /* CILIA_STRUCTS_ONLY */
#endif /* CILIA_LB_HOOK_H */
