/* overlay: the source identity carried across the VXLAN tunnel (Cilium's design).
 *
 * The sending node puts the source's security identity in the VNI (bpf_skb_set_tunnel_key on
 * the collect-metadata VXLAN device); the receiving node reads it back
 * (bpf_skb_get_tunnel_key) and hands it to the pod's ingress program in skb->mark, tagged with
 * MARK_MAGIC_IDENTITY. cil_to_pod trusts a tagged mark instead of looking the source up.
 */
#ifndef CILIA_OVERLAY_H
#define CILIA_OVERLAY_H

#include "types.h"
#include "ipcache.h"

/* skb->mark layout (Cilium's): bits 8-11 the magic, bits 16-31 identity bits 0-15, bits 0-7
 * identity bits 16-23. */
#define MARK_MAGIC_HOST_MASK 0x0F00
#define MARK_MAGIC_IDENTITY 0x0F00
/* The VNI is 24 bits: identities above do not travel (CIDR identities are node-local). */
#define OVERLAY_VNI_MAX 0xFFFFFF
#define OVERLAY_TTL 64
#define OVERLAY_AF_INET 2 /* AF_INET, for bpf_fib_lookup */
/* Reserved identities the tunnel translates (services/common/identities.py). */
#define CILIA_ID_HOST 1
#define CILIA_ID_REMOTE_NODE 6
/* Cilium's drop reason: the destination has no tunnel endpoint in the ipcache. */
#define DROP_NO_TUNNEL_ENDPOINT 160

#ifndef CILIA_STRUCTS_ONLY

static __always_inline u32 identity_mark(u32 identity)
{
	return MARK_MAGIC_IDENTITY | ((identity & 0xFFFF) << 16) | ((identity & 0xFF0000) >> 16);
}

/* The identity a tagged mark carries; 0 when the mark is not an identity mark. */
static __always_inline u32 mark_identity(u32 mark)
{
	if ((mark & MARK_MAGIC_HOST_MASK) != MARK_MAGIC_IDENTITY)
		return CILIA_ID_UNKNOWN;
	return ((mark & 0xFF) << 16) | (mark >> 16);
}

/* The VNI that carries @identity; 0 ("look it up") for world and for node-local identities,
 * which the receiver resolves from its own ipcache exactly as without a tunnel. */
static __always_inline u32 overlay_vni(u32 identity)
{
	if (identity > OVERLAY_VNI_MAX || identity == CILIA_ID_WORLD)
		return 0;
	return identity;
}

/* The source identity of a packet entering a pod: the one the tunnel delivered, else the
 * ipcache's. */
static __always_inline u32 overlay_source_identity(const struct __sk_buff *skb, u32 saddr)
{
	u32 id = mark_identity(skb->mark);

	return id ? id : ipcache_identity(saddr);
}

#endif /* CILIA_STRUCTS_ONLY */
#endif /* CILIA_OVERLAY_H */
