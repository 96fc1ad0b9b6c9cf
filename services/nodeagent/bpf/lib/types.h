/* Common types and constants shared by every cilia datapath header.
 *
 * With CILIA_STRUCTS_ONLY defined (the layout test compiles the headers with gcc) only the
 * struct definitions are visible; maps and helpers need bcc.
 */
#ifndef CILIA_TYPES_H
#define CILIA_TYPES_H

#ifdef CILIA_STRUCTS_ONLY
#include <stdint.h>
typedef uint8_t u8;
typedef uint16_t u16;
typedef uint32_t u32;
typedef uint64_t u64;
#endif

/* Policy direction relative to the subject endpoint (Cilium's numbering). */
#define CILIA_DIR_INGRESS 0
#define CILIA_DIR_EGRESS 1

/* Reserved identities used by the datapath (services/common/identities.py). */
#define CILIA_ID_UNKNOWN 0
#define CILIA_ID_WORLD 2

#endif /* CILIA_TYPES_H */
