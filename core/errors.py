"""The data plane's one set of errors: one table of kinds, and a constructor per kind.

`KINDS` says, per kind (the stable, protocol-neutral `code` clients see), the HTTP status both
REST protocols answer, the gRPC status code (by name: core/ imports no grpc; the gRPC adapter,
serve/protocols/oip_grpc.py, turns it into a `grpc.StatusCode`) and the Retry-After, in whole
seconds, of the kinds where a retry helps. Errors are built by name, `errors.model_not_found(...)`,
never from literals, so a kind's status and Retry-After are said once. No Ray, no HTTP framework.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ErrorKind:
    status: int  # HTTP
    grpc: str  # a grpc.StatusCode member's name
    retry_after_s: int | None = None  # None: retrying the same request now would fail the same way


KINDS: dict[str, ErrorKind] = {
    # Which model, version or path.
    "model_not_found": ErrorKind(404, "NOT_FOUND"),
    "version_not_served": ErrorKind(404, "NOT_FOUND"),
    "alias_not_served": ErrorKind(404, "NOT_FOUND"),
    "not_found": ErrorKind(404, "NOT_FOUND"),
    "review_disabled": ErrorKind(404, "NOT_FOUND"),
    "method_not_allowed": ErrorKind(405, "INVALID_ARGUMENT"),
    # The request itself.
    "bad_request": ErrorKind(400, "INVALID_ARGUMENT"),
    "missing_image": ErrorKind(400, "INVALID_ARGUMENT"),
    "invalid_image": ErrorKind(400, "INVALID_ARGUMENT"),
    "invalid_input": ErrorKind(400, "INVALID_ARGUMENT"),
    "invalid_parameter": ErrorKind(422, "INVALID_ARGUMENT"),
    "unsupported_media_type": ErrorKind(415, "INVALID_ARGUMENT"),
    "payload_too_large": ErrorKind(413, "RESOURCE_EXHAUSTED"),
    "request_timeout": ErrorKind(408, "DEADLINE_EXCEEDED"),
    # The platform cannot answer now; Retry-After says when another try is worth it. Capacity
    # frees within about a second (`overloaded` is given the queue's measured drain time instead);
    # a loading model takes seconds; a version that failed to load is only retried by the watcher,
    # with a growing backoff.
    "overloaded": ErrorKind(503, "UNAVAILABLE", 1),
    "deadline_exceeded": ErrorKind(503, "UNAVAILABLE", 1),
    "stage_unavailable": ErrorKind(503, "UNAVAILABLE", 1),
    "too_many_connections": ErrorKind(503, "UNAVAILABLE", 1),
    "model_loading": ErrorKind(503, "UNAVAILABLE", 5),
    "model_unavailable": ErrorKind(503, "UNAVAILABLE", 30),
    "internal_error": ErrorKind(500, "INTERNAL"),
}

# /readyz's 503: a replica that is not ready is mostly one whose models are still loading.
NOT_READY_RETRY_AFTER_S = KINDS["model_loading"].retry_after_s


class DataPlaneError(Exception):
    """Built by the constructors below (their kind's status and Retry-After from `KINDS`)."""

    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}

    @property
    def retry_after_s(self) -> str | None:
        return self.headers.get("Retry-After")

    @property
    def grpc_code_name(self) -> str:
        kind = KINDS.get(self.code)
        return kind.grpc if kind is not None else "INTERNAL"  # never UNKNOWN


def shown(text: str, limit: int = 80) -> str:
    """A client-supplied name as echoed in an error: repr'd and cut, so a 10 KB name stays a line."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} chars)"


def _error(code: str, message: str, retry_after_s: float | None = None,
           headers: dict | None = None) -> DataPlaneError:
    kind = KINDS[code]
    headers = dict(headers or {})
    # Retry-After is whole seconds; a measured wait under a second still says 1, never 0.
    seconds = kind.retry_after_s if retry_after_s is None else max(1, math.ceil(retry_after_s))
    if seconds is not None:
        headers["Retry-After"] = str(seconds)
    return DataPlaneError(kind.status, code, message, headers)


# -- which model, version or path ------------------------------------------------------------
def model_not_found(name: str, served: list[str], alias: str | None = None) -> DataPlaneError:
    where = f" under alias {alias!r}" if alias else ""
    return _error("model_not_found", f"no model named {shown(name)} is served{where}; served: {served}")


def version_not_served(name: str, version: str, served: list[str]) -> DataPlaneError:
    return _error("version_not_served", f"version {shown(version)} of model {shown(name)} is not served; "
                  f"served versions: {served} (serve it by pointing an alias at it)")


def alias_not_served(alias: str, served: list[str]) -> DataPlaneError:
    return _error("alias_not_served", f"alias {shown(alias)} is not served; served aliases: {served}")


def not_found(message: str) -> DataPlaneError:
    return _error("not_found", message)


def review_disabled(message: str) -> DataPlaneError:
    return _error("review_disabled", message)


def method_not_allowed(method: str, path: str, allowed: list[str]) -> DataPlaneError:
    return _error("method_not_allowed", f"{method} is not allowed on {shown(path)}; use {', '.join(allowed)}",
                  headers={"Allow": ", ".join(allowed)})


# -- the request itself ----------------------------------------------------------------------
def bad_request(message: str) -> DataPlaneError:
    return _error("bad_request", message)


def missing_image(message: str) -> DataPlaneError:
    return _error("missing_image", message)


def invalid_image(message: str) -> DataPlaneError:
    return _error("invalid_image", message)


def invalid_input(message: str) -> DataPlaneError:
    return _error("invalid_input", message)


def invalid_parameter(message: str) -> DataPlaneError:
    return _error("invalid_parameter", message)


def unsupported_media_type(message: str) -> DataPlaneError:
    return _error("unsupported_media_type", message)


def payload_too_large(message: str) -> DataPlaneError:
    return _error("payload_too_large", message)


def request_timeout(message: str) -> DataPlaneError:
    return _error("request_timeout", message)


# -- the platform cannot answer now ------------------------------------------------------------
def overloaded(message: str, retry_after_s: float | None = None) -> DataPlaneError:
    """`retry_after_s`: when the queue will have drained, if measured; else the table's."""
    return _error("overloaded", message, retry_after_s)


def deadline_exceeded(name: str, budget_s: float) -> DataPlaneError:
    return _error("deadline_exceeded", f"model {shown(name)} could not start within the "
                  f"{budget_s * 1000:.0f} ms budget; retry later")


def stage_unavailable(reason: str) -> DataPlaneError:
    return _error("stage_unavailable", f"a pipeline stage is unavailable: {reason}")


def too_many_connections(limit: int) -> DataPlaneError:
    return _error("too_many_connections", f"more than {limit} open connections from this client; "
                  "close some or reuse them")


def model_loading(name: str, alias: str) -> DataPlaneError:
    return _error("model_loading", f"model {name!r}@{alias} is loading")


def model_unavailable(name: str, alias: str, version: str | None, reason: str) -> DataPlaneError:
    return _error("model_unavailable", f"model {name!r}@{alias} version {version} cannot serve: {reason}")


def internal_error(message: str) -> DataPlaneError:
    return _error("internal_error", message)
