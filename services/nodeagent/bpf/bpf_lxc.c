/* Programs on a pod's host-side veth.
 *
 * cil_from_pod runs on tc ingress of the host-side veth (packets leaving the pod: the pod's
 * egress policy); cil_to_pod runs on tc egress (packets entering the pod: its ingress policy).
 * Forwarding itself is left to the node's kernel routes.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>

#include "lib/types.h"
#include "lib/parse.h"
#include "lib/ipcache.h"
#include "lib/endpoints.h"
#include "lib/policy.h"
#include "lib/conntrack.h"
#include "lib/events.h"
#include "lib/lb_hook.h"
#include "lib/overlay.h"

/* Connection tracking, then (new flows only) identities, policy and a verdict event. */
static __always_inline int enforce(struct __sk_buff *skb, const struct flow_tuple *t,
				   const struct endpoint_value *ep, u8 dir)
{
	u64 now = bpf_ktime_get_ns();
	u32 peer, src_id, dst_id;
	u8 verdict, reason;

	if (ct_lookup(t, dir, now) != CT_NEW)
		return TC_ACT_OK;

	/* A source that came through the tunnel carries its identity (lib/overlay.h). */
	peer = dir == CILIA_DIR_EGRESS ? ipcache_identity(t->daddr)
				       : overlay_source_identity(skb, t->saddr);
	src_id = dir == CILIA_DIR_EGRESS ? ep->identity : peer;
	dst_id = dir == CILIA_DIR_EGRESS ? peer : ep->identity;
	verdict = policy_decide(ep->identity, peer, dir, t->proto, t->dport);
	if (verdict == POLICY_VERDICT_DENY) {
		emit_flow(skb, t, dir, FLOW_VERDICT_DROPPED, DROP_POLICY_DENY, src_id, dst_id,
			  ep->endpoint_id);
		return TC_ACT_SHOT;
	}
	if (verdict == POLICY_VERDICT_NONE && endpoint_enforces(ep, dir)) {
		emit_flow(skb, t, dir, FLOW_VERDICT_DROPPED, DROP_POLICY, src_id, dst_id,
			  ep->endpoint_id);
		return TC_ACT_SHOT;
	}
	reason = verdict == POLICY_VERDICT_ALLOW ? FLOW_REASON_POLICY_ALLOWED
						 : FLOW_REASON_NOT_ENFORCED;
	ct_create(t, dir, now);
	emit_flow(skb, t, dir, FLOW_VERDICT_FORWARDED, reason, src_id, dst_id, ep->endpoint_id);
	return TC_ACT_OK;
}

int cil_from_pod(struct __sk_buff *skb)
{
	struct flow_tuple t = {};
	struct endpoint_value *ep;

	if (parse_ipv4(skb, &t) < 0)
		return TC_ACT_OK;
	if (svc_translate(skb, &t) < 0)
		return TC_ACT_SHOT;
	ep = endpoint_lookup(t.saddr);
	if (!ep || (ep->ifindex && ep->ifindex != skb->ifindex)) {
		emit_flow(skb, &t, CILIA_DIR_EGRESS, FLOW_VERDICT_DROPPED, DROP_INVALID_SOURCE,
			  CILIA_ID_UNKNOWN, ipcache_identity(t.daddr), 0);
		return TC_ACT_SHOT;
	}
	return enforce(skb, &t, ep, CILIA_DIR_EGRESS);
}

int cil_to_pod(struct __sk_buff *skb)
{
	struct flow_tuple t = {};
	struct endpoint_value *ep;

	if (parse_ipv4(skb, &t) < 0)
		return TC_ACT_OK;
	if (svc_reverse_nat(skb, &t) < 0)
		return TC_ACT_SHOT;
	ep = endpoint_lookup(t.daddr);
	if (!ep)
		return TC_ACT_OK;
	return enforce(skb, &t, ep, CILIA_DIR_INGRESS);
}
