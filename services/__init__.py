"""cilia: eBPF networking and security for Kubernetes as event-driven services."""
