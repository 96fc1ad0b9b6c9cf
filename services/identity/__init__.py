"""The identity service: numeric security identities for label sets, and the ipcache."""

from services.identity.allocator import Allocation, Allocator, IdentityError, JetStreamStore
from services.identity.derive import LabelFilter, pod_identity_labels
from services.identity.service import IdentityService

__all__ = ["Allocation", "Allocator", "IdentityError", "IdentityService", "JetStreamStore",
           "LabelFilter", "pod_identity_labels"]
