"""The identity service: numeric security identities for label sets, and the ipcache."""

from services.identity.allocator import Allocation, Allocator
from services.identity.derive import LabelFilter, pod_identity_labels
from services.identity.errors import IdentityError, IdentitySpaceExhausted
from services.identity.service import IdentityService

__all__ = ["Allocation", "Allocator", "IdentityError", "IdentityService", "IdentitySpaceExhausted",
           "LabelFilter", "pod_identity_labels"]
