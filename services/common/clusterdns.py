"""The cluster's DNS settings, which the kubelet and the DNS server must agree on.

The kubelet writes every pod's ``/etc/resolv.conf`` naming kube-dns's fixed ClusterIP and the
search list (Kubernetes' ``--cluster-dns`` and ``--cluster-domain``); the DNS server
(:mod:`services.dns`) answers for the cluster domain.
"""

from __future__ import annotations

CLUSTER_DOMAIN = "cluster.local"
SERVICE_DOMAIN = f"svc.{CLUSTER_DOMAIN}"
# kube-dns's fixed ClusterIP (examples/kube-dns/kube-dns.yaml asks for it): every pod's
# resolv.conf names it before the Service exists, as the kubelet's --cluster-dns does
KUBE_DNS_IP = "10.96.0.10"
NDOTS = 5                       # Kubernetes' ndots: short and partial names try the search list
# glibc's per-query timeout and tries: the lab's DNS is one hop away, so a policy that drops
# DNS fails a lookup in seconds instead of glibc's default 5 s x 2 tries per search domain
RESOLV_TIMEOUT_S = 1
RESOLV_ATTEMPTS = 2


def service_name(namespace: str, name: str) -> str:
    """``<name>.<namespace>.svc.cluster.local``."""
    return f"{name}.{namespace}.{SERVICE_DOMAIN}"


def resolv_conf(namespace: str) -> str:
    """A pod's ``/etc/resolv.conf`` (what the kubelet writes for ClusterFirst pods)."""
    search = " ".join([f"{namespace}.{SERVICE_DOMAIN}", SERVICE_DOMAIN, CLUSTER_DOMAIN])
    return (f"nameserver {KUBE_DNS_IP}\nsearch {search}\noptions ndots:{NDOTS} "
            f"timeout:{RESOLV_TIMEOUT_S} attempts:{RESOLV_ATTEMPTS}\n")
