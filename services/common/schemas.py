"""Event schemas: the payload schema version, and where each event type's schema lives.

Every event type's payload is a typed, fully checked schema in :mod:`services.common.contract`
(one module per domain); :data:`SCHEMAS` maps event types to them. The codec checks every
payload on encode and on decode.
"""

from __future__ import annotations

from services.common.contract import EVENTS

# Current schema version of every payload. Decoders reject any other.
SCHEMA_VERSION = 1

SCHEMAS = EVENTS
