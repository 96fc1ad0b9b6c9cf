"""The built-in pod workload (HTTP + UDP echo server) and the connection probe."""

from services.workload.connect import Outcome, probe_tcp, probe_udp
from services.workload.server import build_servers, serve

__all__ = ["Outcome", "build_servers", "probe_tcp", "probe_udp", "serve"]
