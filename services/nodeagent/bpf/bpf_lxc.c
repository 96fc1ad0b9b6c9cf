/* Programs on a pod's host-side veth.
 *
 * cil_from_pod runs on tc ingress of the host-side veth (packets leaving the pod: the pod's
 * egress policy); cil_to_pod runs on tc egress (packets entering the pod: its ingress policy).
 * Forwarding itself is left to the node's kernel routes. Both fail closed: a frame they cannot
 * classify is dropped with its reason (lib/parse.h), ARP excepted.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>

#include "lib/types.h"
#include "lib/parse.h"
#include "lib/frag.h"
#include "lib/ipcache.h"
#include "lib/endpoints.h"
#include "lib/policy.h"
#include "lib/conntrack.h"
#include "lib/events.h"
#include "lib/lb_hook.h"
#include "lib/overlay.h"
#include "lib/proxy.h"

#define LXC_CONTINUE -1 /* lxc_parse(): go on with the parsed packet */

/* Parse a frame and give later fragments their ports. LXC_CONTINUE for an IPv4 packet to
 * enforce, else the verdict (ARP passes; the rest is dropped with its reason). */
static __always_inline int lxc_parse(struct __sk_buff *skb, struct flow_tuple *t,
				     struct pkt_info *pi, u8 dir)
{
	int ret = parse_packet(skb, t, pi);

	if (ret == PARSE_PASS)
		return TC_ACT_OK;
	if (ret == PARSE_OK && pi->frag == PKT_FRAG_FIRST)
		frag_record(t, pi->ip_id);
	if (ret == PARSE_OK && pi->frag == PKT_FRAG_LATER && frag_ports(t, pi->ip_id) < 0)
		ret = -DROP_FRAG_NOT_FOUND;
	if (ret == PARSE_OK)
		return LXC_CONTINUE;
	emit_flow(skb, t, dir, FLOW_VERDICT_DROPPED, -ret, CILIA_ID_UNKNOWN, CILIA_ID_UNKNOWN, 0);
	return TC_ACT_SHOT;
}

/* Conntrack and policy. Replies and ICMP errors related to a tracked flow pass; every other
 * packet, established flows' included, gets the current policy's verdict, and a new flow
 * that passes gets a conntrack entry and a verdict event. */
static __always_inline int enforce(struct __sk_buff *skb, const struct flow_tuple *t,
				   const struct pkt_info *pi, const struct endpoint_value *ep,
				   u8 dir)
{
	u64 now = bpf_ktime_get_ns();
	u32 peer, src_id, dst_id;
	u8 verdict, reason;
	int ct;

	if (pi->icmp_error && ct_related(&pi->inner, dir, now) == CT_RELATED)
		return TC_ACT_OK;
	ct = ct_lookup(t, dir, now);
	if (ct == CT_REPLY)
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
	if (ct == CT_ESTABLISHED)
		return TC_ACT_OK;
	reason = verdict == POLICY_VERDICT_ALLOW ? FLOW_REASON_POLICY_ALLOWED
						 : FLOW_REASON_NOT_ENFORCED;
	ct_create(t, dir, now);
	emit_flow(skb, t, dir, FLOW_VERDICT_FORWARDED, reason, src_id, dst_id, ep->endpoint_id);
	return TC_ACT_OK;
}

int cil_from_pod(struct __sk_buff *skb)
{
	struct flow_tuple t = {};
	struct pkt_info pi = {};
	struct endpoint_value *ep;
	int ret;

	ret = lxc_parse(skb, &t, &pi, CILIA_DIR_EGRESS);
	if (ret != LXC_CONTINUE)
		return ret;
	if (pi.frag != PKT_FRAG_LATER && svc_translate(skb, &t) < 0)
		return TC_ACT_SHOT;
	ep = endpoint_lookup(t.saddr);
	if (!ep || (ep->ifindex && ep->ifindex != skb->ifindex)) {
		emit_flow(skb, &t, CILIA_DIR_EGRESS, FLOW_VERDICT_DROPPED, DROP_INVALID_SOURCE,
			  CILIA_ID_UNKNOWN, ipcache_identity(t.daddr), 0);
		return TC_ACT_SHOT;
	}
	ret = enforce(skb, &t, &pi, ep, CILIA_DIR_EGRESS);
	if (ret != TC_ACT_OK || !(ep->flags & ENDPOINT_F_DNS_PROXY) || !dns_redirected(&t))
		return ret;
	/* An allowed DNS packet goes to the node's DNS proxy, never past it (a fragmented
	 * query is dropped: its later fragments could not follow). */
	ret = pi.frag == PKT_FRAG_NONE ? dns_redirect(skb, &t) : -DROP_PROXY_LOOKUP_FAILED;
	if (ret < 0) {
		emit_flow(skb, &t, CILIA_DIR_EGRESS, FLOW_VERDICT_DROPPED, -ret, ep->identity,
			  ipcache_identity(t.daddr), ep->endpoint_id);
		return TC_ACT_SHOT;
	}
	return TC_ACT_OK;
}

int cil_to_pod(struct __sk_buff *skb)
{
	struct flow_tuple t = {};
	struct pkt_info pi = {};
	struct endpoint_value *ep;
	int ret;

	ret = lxc_parse(skb, &t, &pi, CILIA_DIR_INGRESS);
	if (ret != LXC_CONTINUE)
		return ret;
	if (pi.frag != PKT_FRAG_LATER && svc_reverse_nat(skb, &t) < 0)
		return TC_ACT_SHOT;
	/* Fail closed: what leaves for the pod must be for the endpoint behind this very veth
	 * (before its entry exists, or when the veth is another's, nothing gets in). */
	ep = endpoint_lookup(t.daddr);
	if (!ep || (ep->ifindex && ep->ifindex != skb->ifindex)) {
		emit_flow(skb, &t, CILIA_DIR_INGRESS, FLOW_VERDICT_DROPPED, DROP_NO_LXC,
			  ipcache_identity(t.saddr), CILIA_ID_UNKNOWN, 0);
		return TC_ACT_SHOT;
	}
	return enforce(skb, &t, &pi, ep, CILIA_DIR_INGRESS);
}
