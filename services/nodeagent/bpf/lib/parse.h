/* Packet parsing: the IPv4 5-tuple (plus TCP flags) of a packet on a pod's veth. */
#ifndef CILIA_PARSE_H
#define CILIA_PARSE_H

#include "types.h"

/* The parsed flow tuple. Addresses and ports stay in network byte order. */
struct flow_tuple {
	u32 saddr;
	u32 daddr;
	u16 sport;
	u16 dport;
	u8 proto;
	u8 tcp_flags;
	u16 pad;
};

#ifndef CILIA_STRUCTS_ONLY

#define CILIA_ETH_P_IP 0x0800
#define CILIA_IPPROTO_ICMP 1
#define CILIA_IPPROTO_TCP 6
#define CILIA_IPPROTO_UDP 17
#define CILIA_IPPROTO_SCTP 132
#define CILIA_ICMP_ECHOREPLY 0
#define CILIA_ICMP_ECHO 8
#define CILIA_IP_OFFSET_MASK 0x1fff
#define CILIA_TCP_FLAGS_OFFSET 13

/* Fill @t from the packet. Returns 0 for IPv4, -1 for anything the policy does not handle
 * (ARP, IPv6, truncated packets), which the caller passes untouched. Non-first fragments
 * carry no L4 header and are seen with ports 0. */
static __always_inline int parse_ipv4(struct __sk_buff *skb, struct flow_tuple *t)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip;
	u32 l4_off;
	u8 *l4;

	if ((void *)(eth + 1) > data_end)
		return -1;
	if (eth->h_proto != bpf_htons(CILIA_ETH_P_IP))
		return -1;
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end)
		return -1;
	t->saddr = ip->saddr;
	t->daddr = ip->daddr;
	t->proto = ip->protocol;
	if (ip->frag_off & bpf_htons(CILIA_IP_OFFSET_MASK))
		return 0;
	l4_off = ip->ihl * 4;
	if (l4_off < sizeof(*ip))
		return -1;
	l4 = (u8 *)ip + l4_off;
	switch (ip->protocol) {
	case CILIA_IPPROTO_TCP:
		if ((void *)(l4 + CILIA_TCP_FLAGS_OFFSET + 1) > data_end)
			return -1;
		t->tcp_flags = l4[CILIA_TCP_FLAGS_OFFSET];
		/* fall through */
	case CILIA_IPPROTO_UDP:
	case CILIA_IPPROTO_SCTP:
		if ((void *)(l4 + 4) > data_end)
			return -1;
		t->sport = *(u16 *)l4;
		t->dport = *(u16 *)(l4 + 2);
		break;
	case CILIA_IPPROTO_ICMP:
		/* Echo id stands in for ports so that a reply is the reverse tuple of its request. */
		if ((void *)(l4 + 6) > data_end)
			return -1;
		if (l4[0] == CILIA_ICMP_ECHO)
			t->sport = *(u16 *)(l4 + 4);
		else if (l4[0] == CILIA_ICMP_ECHOREPLY)
			t->dport = *(u16 *)(l4 + 4);
		break;
	}
	return 0;
}

#endif /* CILIA_STRUCTS_ONLY */
#endif /* CILIA_PARSE_H */
