/* metrics: per-CPU packet and byte counters of every verdict the datapath reports, and of
 * events the ring buffer could not take. Counted where events are emitted, so the fast path
 * (established flows and replies) pays nothing. */
#ifndef CILIA_METRICS_H
#define CILIA_METRICS_H

#include "types.h"

/* Slot = reason * 2 + direction; reasons are below 256 (lib/events.h). */
#define METRICS_SLOTS 512
/* Slot counting verdict events lost because the ring buffer was full. */
#define METRICS_SLOT_EVENTS_LOST 0

struct metrics_value {
	u64 packets;
	u64 bytes;
};

#ifndef CILIA_STRUCTS_ONLY

BPF_TABLE_PINNED("percpu_array", u32, struct metrics_value, cilia_metrics, METRICS_SLOTS,
		 CILIA_PIN_DIR "/metrics");

static __always_inline void metrics_count(u32 slot, u32 bytes)
{
	struct metrics_value *m = cilia_metrics.lookup(&slot);

	if (m) {
		m->packets += 1;
		m->bytes += bytes;
	}
}

#endif /* CILIA_STRUCTS_ONLY */
#endif /* CILIA_METRICS_H */
