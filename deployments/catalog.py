"""Which version of each model answers: aliases and versions resolved, models described.

The alias watcher (alias_watcher.py) keeps the table of what serves per alias; the catalog reads
it for the protocols: the version a request is answered by (the serving alias's, `?alias=`'s,
or an explicit version, as OIP addresses it), read once per request, and what `/v1/models` and
OIP's model metadata say about each model. A name, alias or version that does not serve is one
of the named errors (core/errors.py). No Ray: unit-tested over a real watcher and model source.
"""

from __future__ import annotations

from core import errors
from core.errors import DataPlaneError
from deployments.alias_watcher import AliasWatcher
from model_registry.source import ResolvedModel


class Catalog:
    def __init__(self, watcher: AliasWatcher, serving_alias: str, aliases: list[str]):
        self.watcher = watcher
        self.serving_alias = serving_alias
        self.aliases = aliases  # the serving alias first, then those addressed with ?alias=

    # -- which version answers ----------------------------------------------------------------
    def serving(self, name: str, alias: str | None = None) -> ResolvedModel:
        """The version `alias` (default: the serving alias) serves now; read once per request."""
        alias = alias or self.serving_alias
        if alias not in self.aliases:
            raise errors.alias_not_served(alias, self.aliases)
        resolved = self.watcher.serving.get(alias, {}).get(name)
        if resolved is not None:
            return resolved
        st = self.watcher.states.get((alias, name))
        # An alias that was removed (it served, now points nowhere) is as unknown as a name never seen.
        if st is None or (st.version is None and st.previous is not None and not st.error):
            raise self.unknown(name, alias)
        if st.error:
            raise errors.model_unavailable(name, alias, st.failed_version, st.error)
        raise errors.model_loading(name, alias)

    def serving_version(self, name: str, version: str | None) -> tuple[ResolvedModel, str]:
        """(the model, the alias it is served under) for an explicit version, as OIP addresses it;
        no version: the serving alias's. A version that no alias serves now is `version_not_served`."""
        if not version:
            return self.serving(name), self.serving_alias
        self.require(name)
        for alias in [self.serving_alias, *self.aliases]:
            resolved = self.watcher.serving.get(alias, {}).get(name)
            if resolved is not None and resolved.version == version:
                return resolved, alias
        raise errors.version_not_served(name, version, sorted(self.served_versions(name)))

    def served_versions(self, name: str) -> dict[str, ResolvedModel]:
        """version -> the ResolvedModel serving it, over every served alias."""
        out = {}
        for alias in self.aliases:
            resolved = self.watcher.serving.get(alias, {}).get(name)
            if resolved is not None:
                out.setdefault(resolved.version, resolved)
        return out

    def serving_now(self, name: str) -> ResolvedModel | None:
        """The serving alias's version of `name`, if it serves one."""
        return self.watcher.serving.get(self.serving_alias, {}).get(name)

    def serving_keys(self) -> set[str]:
        """The model keys (name:version) the serving alias serves: what every stage must hold."""
        return {r.key for r in self.watcher.serving.get(self.serving_alias, {}).values()}

    # -- which models ------------------------------------------------------------------------
    def names(self) -> list[str]:
        return sorted({name for (_, name) in self.watcher.states})

    def require(self, name: str) -> None:
        """`model_not_found` unless some alias has named `name`."""
        if name not in self.names():
            raise self.unknown(name)

    def unknown(self, name: str, alias: str | None = None) -> DataPlaneError:
        return errors.model_not_found(name, self.names(), alias)

    # -- describe ----------------------------------------------------------------------------
    def describe(self, name: str) -> dict:
        """{"version", "alias", "state", "task", "aliases"[, "error"]}: the serving alias's state
        of the model, and every served alias's (with its last load error, if any)."""
        aliases = {}
        for alias in self.aliases:
            st = self.watcher.states.get((alias, name))
            if st is None:
                continue
            entry = {"version": st.version, "state": st.state, "previous": st.previous}
            if st.error:
                entry.update(failed_version=st.failed_version, error=st.error, attempts=st.attempts)
            aliases[alias] = entry
        main = aliases.get(self.serving_alias) or next(iter(aliases.values()), {"state": "not_served"})
        resolved = self.serving_now(name)
        out = {"version": main.get("version"), "alias": self.serving_alias, "state": main["state"],
               "task": resolved.spec.task if resolved else None, "aliases": aliases}
        if main.get("error"):
            out["error"] = main["error"]
        return out

    def list_models(self) -> list[dict]:
        """Every model some alias names, in name order: name, task, version, state, aliases."""
        out = []
        for name in self.names():
            info = self.describe(name)
            out.append({"name": name, "task": info.get("task"), "version": info.get("version"),
                        "state": info["state"], "aliases": info["aliases"]})
        return out

    def metadata(self, name: str, version: str | None = None) -> dict:
        """{"name", "task", "versions"}: with a version, that one (if it serves); else every served
        version, the task being the serving alias's."""
        if version:
            resolved, _ = self.serving_version(name, version)
            versions = [resolved.version]
        else:
            resolved = self.serving(name)
            versions = sorted(self.served_versions(name), key=_version_order)
        return {"name": name, "task": resolved.spec.task, "versions": versions}

    # -- the watcher's state -------------------------------------------------------------------
    def serving_states(self) -> dict[str, str]:
        """name -> state ("ready", "loading", "failed") of every model of the serving alias."""
        return {name: st.state for (alias, name), st in self.watcher.states.items() if alias == self.serving_alias}

    @property
    def ready(self) -> bool:
        return self.watcher.ready

    @property
    def registry_error(self) -> str | None:
        return self.watcher.registry_error


def _version_order(version: str):
    """Registry versions (1, 2, ..., 10) in number order; content hashes after, as text."""
    return (0, int(version)) if version.isdigit() else (1, version)
