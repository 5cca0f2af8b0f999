"""The cluster token: where it is, creating it when there is none, the environment that uses it.

Token auth stays on everywhere (a cluster must not accept unauthenticated joins or jobs).
The token lives where Ray's own `ray` and `serve` CLIs look by default, `~/.ray/auth_token`,
so that a user's plain `serve status` or `ray status` works against `make up`'s head too;
`RAY_AUTH_TOKEN` / `RAY_AUTH_TOKEN_PATH` override it, as they do for Ray.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from pathlib import Path

AUTH_MODE_ENV = "RAY_AUTH_MODE"
TOKEN_ENV = "RAY_AUTH_TOKEN"
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"


def default_token_path() -> Path:
    return Path.home() / ".ray" / "auth_token"


def token_source(env: Mapping[str, str]) -> str | None:
    """Where this node's cluster token comes from, or None if it has none."""
    if env.get(TOKEN_ENV):
        return f"${TOKEN_ENV}"
    if env.get(TOKEN_PATH_ENV) and Path(env[TOKEN_PATH_ENV]).is_file():
        return env[TOKEN_PATH_ENV]
    default = default_token_path()
    return str(default) if default.is_file() else None


def ensure_token(env: Mapping[str, str] | None = None) -> tuple[str, bool]:
    """(where the token is, whether it was just created). Creates ~/.ray/auth_token if there is none."""
    env = os.environ if env is None else env
    source = token_source(env)
    if source is not None:
        return source, False
    path = default_token_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    # Owner-only from the first byte: the token is the cluster's only guard.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    return str(path), True


def token_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """`env` plus RAY_AUTH_MODE=token: what every process that starts or talks to a head runs with."""
    return {**(os.environ if env is None else env), AUTH_MODE_ENV: "token"}
