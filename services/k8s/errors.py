"""The Kubernetes watcher's exception hierarchy."""

from __future__ import annotations

from services.common.errors import CiliaError

HTTP_GONE = 410     # a resourceVersion (or a list's continue token) older than the server keeps


class K8sError(CiliaError):
    """Base of the watcher's errors."""


class ConfigError(K8sError):
    """No way to reach the API server: neither in-cluster credentials nor a kubeconfig."""


class ApiError(K8sError):
    """The API server answered with an error status (or a watch ERROR event)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"API server: {status} {message}")
        self.status = status


class Gone(ApiError):
    """410 Gone: the position is compacted away; only a new list can continue."""

    def __init__(self, message: str) -> None:
        super().__init__(HTTP_GONE, message)


class BrokenStream(K8sError):
    """A watch stream ended in the middle of an event or could not be read."""


def status_error(status: object) -> ApiError:
    """The error a ``kind: Status`` object (an error body, a watch ERROR event) reports."""
    body = status if isinstance(status, dict) else {}
    code = body.get("code")
    message = f"{body.get('reason') or ''}: {body.get('message') or ''}".strip(": ")
    if code == HTTP_GONE:
        return Gone(message or "Gone")
    return ApiError(code if isinstance(code, int) else 0, message or repr(status)[:200])
