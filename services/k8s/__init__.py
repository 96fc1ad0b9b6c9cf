"""The Kubernetes watcher: lists and watches the API server and publishes objects on the bus.

Public and pure: the registry of kinds a source accepts (:mod:`.kinds`, which ``cilia apply``
checks against too), the watched resources (:mod:`.resources`) and what of an object is
compared and published (:mod:`.view`). The process (:mod:`.service`, with its reflectors,
publisher and API client) is the service's own. Leader election (:mod:`.leader`, pure rules in
:mod:`.election`) lets one of its replicas publish; :mod:`.feedback` (pure rules in
:mod:`.status`) writes the policy service's verdicts back to Kubernetes as Events and status
conditions.
"""
