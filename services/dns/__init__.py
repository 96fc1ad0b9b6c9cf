"""Cluster DNS: the kube-dns pods' server (``<svc>.<ns>.svc.cluster.local`` -> ClusterIP)."""

from services.dns.records import CLUSTER_DOMAIN, answer, respond, service_name, zone_from_view

__all__ = ["CLUSTER_DOMAIN", "answer", "respond", "service_name", "zone_from_view"]
