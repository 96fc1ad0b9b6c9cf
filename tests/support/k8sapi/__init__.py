"""A Kubernetes API server for tests, speaking the real wire protocol on 127.0.0.1.

Faithful (to kube-apiserver 1.33 over JSON, as client-go and kubernetes_asyncio see it): the
paths of the served kinds (``_kinds.KINDS``; namespaced ones also across namespaces, plus the
legacy ``/watch/`` prefix), discovery (``/api``, ``/apis``, resource lists), ``/version``,
``/healthz``; bearer-token auth (401); errors as ``kind: Status`` with the apiserver's codes,
reasons and messages; one global resourceVersion bumped by every write (a string in JSON),
server-set ``uid``, ``creationTimestamp``, ``generation`` (bumped when anything but metadata and
status changes) and ``resourceVersion``; no-op updates write nothing; PUT's optimistic
concurrency (409 Conflict), POST's 409 AlreadyExists, 404 on absent objects; the ``/status``
subresource (it changes only status; a main PUT or PATCH keeps the stored status); finalizers
(DELETE only sets ``deletionTimestamp`` until they are removed); LIST with ``limit``/``continue``
served from the first page's resourceVersion (a consistent snapshot, 410 once compacted),
``resourceVersionMatch=Exact``, label selectors (``=``, ``==``, ``!=``, ``in``, ``notin``,
exists, ``!key``, ``>``, ``<``) and the field selectors each kind supports; WATCH as a chunked
stream of JSON lines from "now" (synthetic ADDED) or from a resourceVersion out of the history,
410 Expired as a single ERROR event after ``compact()``, ``timeoutSeconds``, bookmarks
(periodic, and soon after other kinds' writes move the resourceVersion),
``sendInitialEvents`` with its end-of-initial-events bookmark, and selectors on watches (an
object that stops matching is sent as DELETED). Not faithful: no admission (namespaces need not
exist, deleting one deletes nothing), no validation or defaulting beyond object names and the
metadata above, create keeps ``status`` (the apiserver resets it for most kinds), strategic
merge patch is a plain JSON merge patch (lists are replaced, not merged by key; CRDs refuse it
with 415 as the apiserver does), no JSON patch or server-side apply (415), no
``managedFields``, no graceful pod deletion, no protobuf or table output, no RBAC (one token
may do everything), no watch-cache lag or etcd slowness (``event_delay`` stands in for it).
"""

from tests.support.k8sapi._errors import (
    AlreadyExists,
    ApiError,
    BadRequest,
    Conflict,
    Expired,
    Invalid,
    NotFound,
)
from tests.support.k8sapi._kinds import KINDS, Kind
from tests.support.k8sapi._selectors import Selector, SelectorError
from tests.support.k8sapi._server import ApiServer, Request, api_server
from tests.support.k8sapi._store import Change, Store, merge_patch

__all__ = [
    "KINDS",
    "AlreadyExists",
    "ApiError",
    "ApiServer",
    "BadRequest",
    "Change",
    "Conflict",
    "Expired",
    "Invalid",
    "Kind",
    "NotFound",
    "Request",
    "Selector",
    "SelectorError",
    "Store",
    "api_server",
    "merge_patch",
]
