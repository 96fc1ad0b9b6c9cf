/* proxy: hand a pod's DNS query to the node's transparent DNS proxy.
 *
 * An endpoint whose egress policy has DNS rules or toFQDNs peers carries ENDPOINT_F_DNS_PROXY.
 * Its allowed UDP and TCP packets to port 53 are assigned to the proxy's socket (an
 * established TCP connection's own socket, else the listener on 127.0.0.1:CILIA_DNS_PROXY_PORT)
 * and marked: the node's rule for CILIA_PROXY_MARK routes them to the local stack, which
 * delivers them to that socket without changing a byte (the proxy reads the original
 * destination from the socket). The pod keeps asking the server it chose.
 *
 * Fail closed: without a proxy socket (the agent restarting) the query is dropped, never let
 * past the proxy; the pod's resolver asks again.
 */
#ifndef CILIA_PROXY_H
#define CILIA_PROXY_H

#include "types.h"

#ifndef CILIA_DNS_PROXY_PORT
#define CILIA_DNS_PROXY_PORT 10053
#endif
#define CILIA_PROXY_MARK 0x200     /* the node's ip rule: fwmark 0x200/0xf00 -> local table */
#define CILIA_DNS_PORT 53
#define CILIA_LOCALHOST 0x7f000001

#define DROP_PROXY_LOOKUP_FAILED 162 /* no DNS proxy socket to hand the query to */
#define DROP_PROXY_SET_FAILED 163    /* the socket could not be assigned */

#ifndef CILIA_STRUCTS_ONLY

static __always_inline int dns_redirected(const struct flow_tuple *t)
{
	return (t->proto == CILIA_IPPROTO_UDP || t->proto == CILIA_IPPROTO_TCP) &&
	       t->dport == bpf_htons(CILIA_DNS_PORT);
}

/* Assign the packet to the proxy. 0 on success, else -DROP_* (drop it). */
static __always_inline int dns_redirect(struct __sk_buff *skb, const struct flow_tuple *t)
{
	struct bpf_sock_tuple tuple = {};
	struct bpf_sock *sk = NULL;
	long err;

	if (t->proto == CILIA_IPPROTO_TCP) {
		/* a connection the proxy already accepted keeps its own socket */
		tuple.ipv4.saddr = t->saddr;
		tuple.ipv4.daddr = t->daddr;
		tuple.ipv4.sport = t->sport;
		tuple.ipv4.dport = t->dport;
		sk = bpf_skc_lookup_tcp(skb, &tuple, sizeof(tuple.ipv4), BPF_F_CURRENT_NETNS, 0);
		if (sk && sk->state == BPF_TCP_LISTEN) {
			bpf_sk_release(sk);
			sk = NULL;
		}
		if (!sk) {
			__builtin_memset(&tuple, 0, sizeof(tuple));
			tuple.ipv4.daddr = bpf_htonl(CILIA_LOCALHOST);
			tuple.ipv4.dport = bpf_htons(CILIA_DNS_PROXY_PORT);
			sk = bpf_skc_lookup_tcp(skb, &tuple, sizeof(tuple.ipv4),
						BPF_F_CURRENT_NETNS, 0);
		}
	} else {
		tuple.ipv4.daddr = bpf_htonl(CILIA_LOCALHOST);
		tuple.ipv4.dport = bpf_htons(CILIA_DNS_PROXY_PORT);
		sk = bpf_sk_lookup_udp(skb, &tuple, sizeof(tuple.ipv4), BPF_F_CURRENT_NETNS, 0);
	}
	if (!sk)
		return -DROP_PROXY_LOOKUP_FAILED;
	err = bpf_sk_assign(skb, sk, 0);
	bpf_sk_release(sk);
	if (err)
		return -DROP_PROXY_SET_FAILED;
	skb->mark = CILIA_PROXY_MARK;
	return 0;
}

#endif /* CILIA_STRUCTS_ONLY */
#endif /* CILIA_PROXY_H */
