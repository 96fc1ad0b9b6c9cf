/* Service translation hooks.
 *
 * The load-balancing work fills these in: svc_translate() rewrites a packet leaving a pod from
 * a service frontend to a chosen backend (DNAT) before egress policy runs, so policy sees the
 * backend; svc_reverse_nat() restores the frontend on replies entering a pod. Both update @t
 * to match the rewritten packet and return 0, or a negative value to drop. Today they do
 * nothing.
 */
#ifndef CILIA_LB_HOOK_H
#define CILIA_LB_HOOK_H

#include "parse.h"

#ifndef CILIA_STRUCTS_ONLY

static __always_inline int svc_translate(struct __sk_buff *skb, struct flow_tuple *t)
{
	return 0;
}

static __always_inline int svc_reverse_nat(struct __sk_buff *skb, struct flow_tuple *t)
{
	return 0;
}

#endif /* CILIA_STRUCTS_ONLY */
#endif /* CILIA_LB_HOOK_H */
