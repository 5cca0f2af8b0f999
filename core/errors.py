"""The data plane's one set of errors; each protocol maps them to its own statuses.

`status` is the HTTP status (both REST protocols answer it as is); `code` is the stable,
protocol-neutral kind (`model_not_found`, `overloaded`, ...), which the gRPC adapter maps to a
gRPC status code (serve/protocols/oip_grpc.py). `headers` carries Retry-After where a retry
helps. No Ray, no HTTP framework.
"""

from __future__ import annotations

RETRY_AFTER_S = "1"


class DataPlaneError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}

    @property
    def retry_after_s(self) -> str | None:
        return self.headers.get("Retry-After")


def shown(text: str, limit: int = 80) -> str:
    """A client-supplied name as echoed in an error: repr'd and cut, so a 10 KB name stays a line."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} chars)"


def overloaded(message: str, retry_after_s: str = RETRY_AFTER_S) -> DataPlaneError:
    return DataPlaneError(503, "overloaded", message, {"Retry-After": retry_after_s})
