/* Packet parsing: the IPv4 5-tuple (plus TCP flags) of a packet, failing closed.
 *
 * parse_packet() classifies a frame: ARP is left alone (PARSE_PASS), IPv4 is parsed into a
 * flow tuple (PARSE_OK), and everything else is a drop reason (returned negated, Cilium's
 * numbers): VLAN-tagged frames, other ethertypes (IPv6 included), non-Ethernet-II frames, and
 * truncated or invalid IPv4 headers. Headers that sit in paged data are pulled into the
 * linear area first (bpf_skb_pull_data), only when they are not linear already, so the common
 * case pays no copy. Non-first IPv4 fragments carry no L4 header: they come back with ports 0
 * and pi->frag == PKT_FRAG_LATER, and the caller finds their ports (lib/frag.h). An ICMP error
 * (destination unreachable, time exceeded, parameter problem) also yields the tuple of the
 * packet it quotes (pi->inner), so that the caller can relate it to a tracked connection.
 */
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

/* What parsing learnt beyond the tuple. */
struct pkt_info {
	struct flow_tuple inner; /* icmp_error: the tuple of the quoted packet */
	u16 ip_id;               /* network byte order */
	u8 frag;
	u8 icmp_error;
};

#ifndef CILIA_STRUCTS_ONLY

#define CILIA_ETH_P_IP 0x0800
#define CILIA_ETH_P_ARP 0x0806
#define CILIA_ETH_P_8021Q 0x8100
#define CILIA_ETH_P_8021AD 0x88A8
#define CILIA_ETH_P_802_3_MIN 0x0600 /* smaller "ethertypes" are 802.3 lengths */
#define CILIA_IPPROTO_ICMP 1
#define CILIA_IPPROTO_TCP 6
#define CILIA_IPPROTO_UDP 17
#define CILIA_IPPROTO_SCTP 132
#define CILIA_ICMP_ECHOREPLY 0
#define CILIA_ICMP_DEST_UNREACH 3
#define CILIA_ICMP_ECHO 8
#define CILIA_ICMP_TIME_EXCEEDED 11
#define CILIA_ICMP_PARAMETERPROB 12
#define CILIA_IP_OFFSET_MASK 0x1fff
#define CILIA_IP_MF 0x2000
#define CILIA_TCP_FLAGS_OFFSET 13
#define CILIA_IP_MIN_HLEN 20
#define CILIA_TCP_MIN_HLEN 20
#define CILIA_UDP_HLEN 8
#define CILIA_SCTP_HLEN 12
#define CILIA_ICMP_HLEN 8
#define CILIA_QUOTED_L4_LEN 8 /* an ICMP error quotes the IP header and 8 bytes of L4 */
/* Headers never start beyond this offset (Ethernet + IPv4 with options + ICMP + quoted IPv4
 * with options); a bound the verifier can see. */
#define PARSE_MAX_OFF 256

/* parse_packet() results; drops are the negated reason. */
#define PARSE_OK 0
#define PARSE_PASS 1 /* ARP: not classified, passes untouched */

/* Drop reasons of unclassifiable packets (Cilium's numbers, bpf/lib/common.h). */
#define DROP_INVALID 134         /* truncated or invalid IPv4 header */
#define DROP_UNKNOWN_L3 139      /* an ethertype other than IPv4 and ARP (IPv6 included) */
#define DROP_UNSUPPORTED_L2 166  /* not an Ethernet II frame */
#define DROP_FRAG_NOT_FOUND 175  /* a non-first fragment whose first fragment was not seen */
#define DROP_VLAN_FILTERED 182   /* VLAN-tagged */

/* pkt_info.frag */
#define PKT_FRAG_NONE 0
#define PKT_FRAG_FIRST 1 /* offset 0, more fragments follow: carries the L4 header */
#define PKT_FRAG_LATER 2 /* offset > 0: no L4 header */

/* Make the first @len bytes linear, pulling them out of paged data only when they are not
 * linear yet. 0 when the packet has @len bytes and they are linear, -1 otherwise. */
static __always_inline int parse_linear(struct __sk_buff *skb, u32 len)
{
	if ((void *)(long)skb->data + len <= (void *)(long)skb->data_end)
		return 0;
	if (len > skb->len || bpf_skb_pull_data(skb, len) < 0)
		return -1;
	return (void *)(long)skb->data + len <= (void *)(long)skb->data_end ? 0 : -1;
}

/* A pointer to @len bytes at @off (pulled if needed); NULL when the packet is shorter. */
static __always_inline void *parse_header(struct __sk_buff *skb, u32 off, u32 len)
{
	void *data, *data_end, *p;

	if (off > PARSE_MAX_OFF || parse_linear(skb, off + len) < 0)
		return 0;
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	p = data + off;
	if (p + len > data_end)
		return 0;
	return p;
}

/* Ports of the L4 header at @off (@avail bytes of it belong to the datagram). ICMP echo ids
 * stand in for ports so that a reply is the reverse tuple of its request. Returns the ICMP
 * type (or 0), or -1 when the header is truncated. */
static __always_inline int parse_l4(struct __sk_buff *skb, struct flow_tuple *t, u32 off,
				    u32 avail)
{
	u8 *l4;

	switch (t->proto) {
	case CILIA_IPPROTO_TCP:
		if (avail < CILIA_TCP_MIN_HLEN)
			return -1;
		l4 = parse_header(skb, off, CILIA_TCP_MIN_HLEN);
		if (!l4)
			return -1;
		t->tcp_flags = l4[CILIA_TCP_FLAGS_OFFSET];
		t->sport = *(u16 *)l4;
		t->dport = *(u16 *)(l4 + 2);
		return 0;
	case CILIA_IPPROTO_UDP:
	case CILIA_IPPROTO_SCTP:
		if (avail < (t->proto == CILIA_IPPROTO_UDP ? CILIA_UDP_HLEN : CILIA_SCTP_HLEN))
			return -1;
		l4 = parse_header(skb, off, CILIA_UDP_HLEN);
		if (!l4)
			return -1;
		t->sport = *(u16 *)l4;
		t->dport = *(u16 *)(l4 + 2);
		return 0;
	case CILIA_IPPROTO_ICMP:
		if (avail < CILIA_ICMP_HLEN)
			return -1;
		l4 = parse_header(skb, off, CILIA_ICMP_HLEN);
		if (!l4)
			return -1;
		if (l4[0] == CILIA_ICMP_ECHO)
			t->sport = *(u16 *)(l4 + 4);
		else if (l4[0] == CILIA_ICMP_ECHOREPLY)
			t->dport = *(u16 *)(l4 + 4);
		return l4[0];
	}
	return 0;
}

static __always_inline int icmp_is_error(int type)
{
	return type == CILIA_ICMP_DEST_UNREACH || type == CILIA_ICMP_TIME_EXCEEDED ||
	       type == CILIA_ICMP_PARAMETERPROB;
}

/* The packet an ICMP error at @off quotes: its IPv4 header and first 8 bytes of L4 (ports,
 * or the echo id). 0 and pi->inner filled, or -1 when the quote is unusable (then the error
 * is an ordinary ICMP packet to policy). */
static __always_inline int parse_quoted(struct __sk_buff *skb, struct pkt_info *pi, u32 off)
{
	struct iphdr *ip = parse_header(skb, off, CILIA_IP_MIN_HLEN);
	u32 ihl;
	u8 proto;

	if (!ip || ip->version != 4)
		return -1;
	ihl = (ip->ihl & 0xf) * 4;
	if (ihl < CILIA_IP_MIN_HLEN || (ip->frag_off & bpf_htons(CILIA_IP_OFFSET_MASK)))
		return -1;
	pi->inner.saddr = ip->saddr;
	pi->inner.daddr = ip->daddr;
	proto = ip->protocol;
	/* Only 8 bytes of L4 are quoted: the TCP flags are not there, the ports are (read them
	 * as UDP's). parse_l4 may pull: @ip is not valid after it. */
	pi->inner.proto = proto == CILIA_IPPROTO_TCP ? CILIA_IPPROTO_UDP : proto;
	if (parse_l4(skb, &pi->inner, off + ihl, CILIA_QUOTED_L4_LEN) < 0)
		return -1;
	pi->inner.proto = proto;
	return 0;
}

/* Classify a frame and fill @t (and @pi). PARSE_OK for IPv4, PARSE_PASS for ARP, else the
 * negated drop reason. */
static __always_inline int parse_packet(struct __sk_buff *skb, struct flow_tuple *t,
					struct pkt_info *pi)
{
	struct ethhdr *eth;
	struct iphdr *ip;
	u32 ihl, tot_len;
	u16 proto, frag;
	int type;

	if (skb->vlan_present)
		return -DROP_VLAN_FILTERED; /* the tag lives in skb metadata by now */
	eth = parse_header(skb, 0, ETH_HLEN);
	if (!eth)
		return -DROP_INVALID;
	proto = bpf_ntohs(eth->h_proto);
	if (proto == CILIA_ETH_P_ARP)
		return PARSE_PASS;
	if (proto == CILIA_ETH_P_8021Q || proto == CILIA_ETH_P_8021AD)
		return -DROP_VLAN_FILTERED;
	if (proto < CILIA_ETH_P_802_3_MIN)
		return -DROP_UNSUPPORTED_L2;
	if (proto != CILIA_ETH_P_IP)
		return -DROP_UNKNOWN_L3;
	ip = parse_header(skb, ETH_HLEN, CILIA_IP_MIN_HLEN);
	if (!ip)
		return -DROP_INVALID;
	t->saddr = ip->saddr; /* even for an invalid header: the drop event names them */
	t->daddr = ip->daddr;
	t->proto = ip->protocol;
	ihl = (ip->ihl & 0xf) * 4;
	tot_len = bpf_ntohs(ip->tot_len);
	if (!tot_len && skb->gso_size)
		tot_len = skb->len - ETH_HLEN; /* BIG TCP: the length is the skb's */
	if (ip->version != 4 || ihl < CILIA_IP_MIN_HLEN || tot_len < ihl ||
	    ETH_HLEN + tot_len > skb->len)
		return -DROP_INVALID;
	pi->ip_id = ip->id;
	frag = bpf_ntohs(ip->frag_off);
	if (frag & CILIA_IP_OFFSET_MASK) {
		pi->frag = PKT_FRAG_LATER;
		return PARSE_OK;
	}
	if (frag & CILIA_IP_MF)
		pi->frag = PKT_FRAG_FIRST;
	if (ihl > CILIA_IP_MIN_HLEN && !parse_header(skb, ETH_HLEN, ihl))
		return -DROP_INVALID; /* options beyond the packet */
	type = parse_l4(skb, t, ETH_HLEN + ihl, tot_len - ihl);
	if (type < 0)
		return -DROP_INVALID;
	if (t->proto == CILIA_IPPROTO_ICMP && icmp_is_error(type) && pi->frag == PKT_FRAG_NONE &&
	    parse_quoted(skb, pi, ETH_HLEN + ihl + CILIA_ICMP_HLEN) == 0)
		pi->icmp_error = 1;
	return PARSE_OK;
}

/* The IPv4 tuple of a packet on a program that only needs addresses and ports of what it can
 * parse (underlay, overlay): 0, or -1 for anything else, which such a program passes. */
static __always_inline int parse_ipv4(struct __sk_buff *skb, struct flow_tuple *t)
{
	struct pkt_info pi = {};

	if (parse_packet(skb, t, &pi) != PARSE_OK)
		return -1;
	return pi.frag == PKT_FRAG_LATER ? -1 : 0;
}

#endif /* CILIA_STRUCTS_ONLY */
#endif /* CILIA_PARSE_H */
