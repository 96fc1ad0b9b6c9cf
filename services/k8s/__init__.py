"""The Kubernetes watcher: lists and watches the API server and publishes objects on the bus.

Leader election (:mod:`.leader`, pure rules in :mod:`.election`) lets one of its replicas
publish; :mod:`.feedback` (pure rules in :mod:`.status`) writes the policy service's verdicts
back to Kubernetes as Events and status conditions.
"""
