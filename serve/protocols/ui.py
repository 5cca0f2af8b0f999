"""The try-it page (/ui): static files shipped in the package, served by the ingress itself.

The page only calls the public HTTP API (/v1); this module only hands out files: the page's
own (serve/ui/) and the shipped demo samples, so a new user has something to drop in.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response

from core import errors
from deployments.dataplane import RequestRecord
from serve.http_api import error_response, json_response, routes

PREFIX = "/ui"
UI_DIR = Path(__file__).resolve().parents[1] / "ui"
SAMPLES_DIR = Path(__file__).resolve().parents[2] / "demo_models" / "samples"
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8", ".png": "image/png", ".jpg": "image/jpeg"}
ROUTES = routes(
    ("GET", r"^/ui/?$", "index"),
    ("GET", r"^/ui/samples/?$", "samples"),
    ("GET", r"^/ui/samples/(?P<name>[A-Za-z0-9_.-]+\.(?:jpg|png))$", "sample"),
    ("GET", r"^/ui/(?P<name>[A-Za-z0-9_-]+\.(?:js|css|html))$", "asset"),
)


def _file(directory: Path, name: str) -> Response:
    path = directory / name
    if not path.is_file():
        raise errors.not_found(f"no file {name!r}")
    # no-cache: a browser revalidates, so a new release's page is never mixed with an old script.
    return Response(path.read_bytes(), media_type=_TYPES[path.suffix], headers={"Cache-Control": "no-cache"})


class TryItPage:
    predict_handlers: set[str] = set()
    error_response = staticmethod(error_response)

    async def index(self, request: Request, rid: str, record: RequestRecord) -> Response:
        return _file(UI_DIR, "index.html")

    async def asset(self, request: Request, rid: str, record: RequestRecord, name: str) -> Response:
        return _file(UI_DIR, name)

    async def samples(self, request: Request, rid: str, record: RequestRecord) -> Response:
        names = sorted(p.name for p in SAMPLES_DIR.glob("*") if p.suffix in (".jpg", ".png"))
        return json_response({"samples": names})

    async def sample(self, request: Request, rid: str, record: RequestRecord, name: str) -> Response:
        return _file(SAMPLES_DIR, name)
