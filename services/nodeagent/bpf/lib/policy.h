/* policy: (subject, direction, peer, protocol, destination port range) -> allow / deny.
 *
 * An LPM trie whose fixed part (subject, peer, direction, proto) is always matched in full and
 * whose variable part is the destination port (network byte order), so one entry covers an
 * aligned power-of-two port block; userspace splits ranges into such blocks. Wildcards are the
 * value 0 for peer and proto, and a port prefix of length 0 for any port. Userspace also folds
 * every verdict into the more specific blocks it covers (deny wins), so the longest match alone
 * decides for one (peer, proto) pair. The datapath looks up the four (peer | any) x
 * (proto | any) keys and combines them: any deny denies, else any allow allows.
 */
#ifndef CILIA_POLICY_H
#define CILIA_POLICY_H

#include "types.h"

#define POLICY_VERDICT_NONE 0
#define POLICY_VERDICT_ALLOW 1
#define POLICY_VERDICT_DENY 2

/* Bits of the key data that are always matched: subject, peer, direction, proto. */
#define POLICY_FIXED_PREFIX_BITS 80

struct policy_key {
	u32 prefixlen;
	u32 subject;
	u32 peer;
	u8 direction;
	u8 proto;
	u16 dport; /* network byte order */
};

struct policy_value {
	u8 verdict;
	u8 pad[3];
};

#ifndef CILIA_STRUCTS_ONLY

BPF_TABLE_PINNED("lpm_trie", struct policy_key, struct policy_value, cilia_policy,
		 CILIA_POLICY_MAX, CILIA_PIN_DIR "/policy", BPF_F_NO_PREALLOC);

static __always_inline u8 policy_lookup_one(u32 subject, u32 peer, u8 dir, u8 proto, u16 dport)
{
	struct policy_key key = {
		.prefixlen = POLICY_FIXED_PREFIX_BITS + 16,
		.subject = subject,
		.peer = peer,
		.direction = dir,
		.proto = proto,
		.dport = dport,
	};
	struct policy_value *val = cilia_policy.lookup(&key);

	return val ? val->verdict : POLICY_VERDICT_NONE;
}

/* The verdict for a new flow of @subject with @peer; POLICY_VERDICT_NONE if nothing matches. */
static __always_inline u8 policy_decide(u32 subject, u32 peer, u8 dir, u8 proto, u16 dport)
{
	u8 v1 = policy_lookup_one(subject, peer, dir, proto, dport);
	u8 v2 = policy_lookup_one(subject, peer, dir, 0, dport);
	u8 v3 = policy_lookup_one(subject, 0, dir, proto, dport);
	u8 v4 = policy_lookup_one(subject, 0, dir, 0, dport);

	if (v1 == POLICY_VERDICT_DENY || v2 == POLICY_VERDICT_DENY ||
	    v3 == POLICY_VERDICT_DENY || v4 == POLICY_VERDICT_DENY)
		return POLICY_VERDICT_DENY;
	if (v1 == POLICY_VERDICT_ALLOW || v2 == POLICY_VERDICT_ALLOW ||
	    v3 == POLICY_VERDICT_ALLOW || v4 == POLICY_VERDICT_ALLOW)
		return POLICY_VERDICT_ALLOW;
	return POLICY_VERDICT_NONE;
}

#endif /* CILIA_STRUCTS_ONLY */
#endif /* CILIA_POLICY_H */
