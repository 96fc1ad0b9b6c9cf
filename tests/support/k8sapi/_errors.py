"""The apiserver's errors: each is one ``kind: Status`` body with its HTTP code and reason."""

from __future__ import annotations

from typing import ClassVar

from tests.support.k8sapi._kinds import Kind


class ApiError(Exception):
    """An error the server answers as a ``Status`` object (``code``, ``reason``, ``message``)."""

    code: ClassVar[int] = 500
    reason: ClassVar[str] = "InternalError"

    def __init__(self, message: str, kind: Kind | None = None, name: str = "") -> None:
        super().__init__(message)
        self.message, self.kind, self.name = message, kind, name

    def status(self) -> dict:
        body: dict = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                      "message": self.message, "reason": self.reason, "code": self.code}
        if self.kind is not None:
            body["details"] = {"name": self.name, "group": self.kind.group,
                               "kind": self.kind.plural}
        return body


class BadRequest(ApiError):
    code, reason = 400, "BadRequest"


class Unauthorized(ApiError):
    code, reason = 401, "Unauthorized"


class NotFound(ApiError):
    code, reason = 404, "NotFound"


class MethodNotAllowed(ApiError):
    code, reason = 405, "MethodNotAllowed"


class AlreadyExists(ApiError):
    code, reason = 409, "AlreadyExists"


class Conflict(ApiError):
    code, reason = 409, "Conflict"


class Expired(ApiError):
    code, reason = 410, "Expired"


class UnsupportedMediaType(ApiError):
    code, reason = 415, "UnsupportedMediaType"


class Invalid(ApiError):
    code, reason = 422, "Invalid"


def not_found(kind: Kind, name: str) -> NotFound:
    return NotFound(f'{kind.qualified} "{name}" not found', kind, name)


def conflict(kind: Kind, name: str) -> Conflict:
    return Conflict(f'Operation cannot be fulfilled on {kind.qualified} "{name}": the object '
                    "has been modified; please apply your changes to the latest version and "
                    "try again", kind, name)
