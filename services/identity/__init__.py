"""The identity service: numeric security identities for label sets, and the ipcache.

Its public part is pure: which labels of a pod make its identity (:mod:`.derive`) and its error
hierarchy. The service itself (``python -m services.identity``: :mod:`.service` with the
compare-and-set :mod:`.allocator`) is reached through the bus only.
"""

from services.identity.derive import LabelFilter, pod_identity_labels
from services.identity.errors import IdentityError, IdentitySpaceExhausted

__all__ = ["IdentityError", "IdentitySpaceExhausted", "LabelFilter", "pod_identity_labels"]
