"""The lab's outside world, as the parts that reach it know it.

The lab's external host answers on a few "internet" addresses (RFC 5737 TEST-NET-3, outside
every cluster CIDR; :mod:`services.lab.plan` puts them on the host), and the cluster DNS
(:mod:`services.dns`) gives them names under ``cilia.test``: the lab has no internet, so these
names stand for it.
"""

from __future__ import annotations

import ipaddress

WORLD_IP = ipaddress.IPv4Address("203.0.113.10")   # RFC 5737 TEST-NET-3
# every "internet" address the external host answers on (room for FQDN exercises later)
WORLD_IPS = tuple(WORLD_IP + i for i in range(4))
EXTERNAL_DOMAIN = "cilia.test"
# the names of the external host's addresses: external.cilia.test, world1..world3.cilia.test
EXTERNAL_NAMES: dict[str, ipaddress.IPv4Address] = {
    f"external.{EXTERNAL_DOMAIN}": WORLD_IPS[0],
    **{f"world{i}.{EXTERNAL_DOMAIN}": ip for i, ip in enumerate(WORLD_IPS[1:], 1)},
}
