"""Which version answers (deployments/catalog.py), over a real AliasWatcher and real LocalFileSources
with the shipped demo models: aliases, explicit versions, the named errors, describe. No Ray."""

from __future__ import annotations

import asyncio

import onnx
import pytest

from core.errors import DataPlaneError
from deployments.alias_watcher import AliasWatcher
from deployments.catalog import Catalog
from deployments.config import ModelEntry
from model_registry.source import PROJECT_ROOT, LocalFileSource

DETECTOR = PROJECT_ROOT / "demo_models" / "detector.onnx"
CLASSIFIER = PROJECT_ROOT / "demo_models" / "classifier.onnx"
DET, CLS = "shapes-detector", "shapes-classifier"


class AliasedSources:
    """Several LocalFileSources as one model source, each under its own alias (the MLflow source
    serves several aliases; a local source serves one)."""

    def __init__(self, *sources: LocalFileSource):
        self.sources = list(sources)

    def poll(self) -> dict[str, dict[str, str]]:
        out = {}
        for source in self.sources:
            out.update(source.poll())
        return out

    def fetch(self, name: str, version: str):
        for source in self.sources:
            try:
                return source.fetch(name, version)
            except LookupError:  # not this source's model (KeyError) or version
                continue
        raise LookupError(f"no source has {name}:{version}")


async def _ready(resolved) -> None:
    """Stands in for loading the version into the stages: nothing to load here."""


def _watch(source, prepare=_ready) -> AliasWatcher:
    watcher = AliasWatcher(source, prepare, poll_interval_s=60.0)
    asyncio.run(watcher.poll_once())
    return watcher


def _error(call) -> DataPlaneError:
    with pytest.raises(DataPlaneError) as err:
        call()
    return err.value


@pytest.fixture(scope="module")
def staging_detector(tmp_path_factory):
    """The demo detector as another version (same model, other bytes: another content hash)."""
    model = onnx.load(str(DETECTOR))
    model.doc_string = "staging build"
    path = tmp_path_factory.mktemp("staging") / "detector.onnx"
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def production():
    return LocalFileSource([ModelEntry(name=DET, path=str(DETECTOR)), ModelEntry(name=CLS, path=str(CLASSIFIER))],
                           alias="production")


@pytest.fixture(scope="module")
def versions(production, staging_detector):
    staging = LocalFileSource([ModelEntry(name=DET, path=str(staging_detector))], alias="staging")
    return production.poll()["production"][DET], staging.poll()["staging"][DET], staging


@pytest.fixture()
def catalog(production, versions):
    staging = versions[2]
    return Catalog(_watch(AliasedSources(production, staging)), "production", ["production", "staging"])


def test_the_serving_alias_answers_by_default(catalog, versions):
    prod, staging, _ = versions
    assert prod != staging
    resolved = catalog.serving(DET)
    assert (resolved.name, resolved.version, resolved.spec.task) == (DET, prod, "detect")
    assert catalog.serving(CLS).spec.task == "classify"
    assert catalog.serving_version(DET, None) == (resolved, "production")
    assert catalog.names() == [CLS, DET]


def test_alias_picks_the_aliases_version(catalog, versions):
    prod, staging, _ = versions
    assert catalog.serving(DET, "production").version == prod
    assert catalog.serving(DET, "staging").version == staging
    assert catalog.served_versions(DET).keys() == {prod, staging}


def test_an_explicit_version_is_found_under_whichever_alias_serves_it(catalog, versions):
    prod, staging, _ = versions
    resolved, alias = catalog.serving_version(DET, staging)
    assert (resolved.version, alias) == (staging, "staging")
    resolved, alias = catalog.serving_version(DET, prod)
    assert (resolved.version, alias) == (prod, "production")


def test_what_does_not_serve_is_a_named_error(catalog, versions):
    prod, staging, _ = versions
    err = _error(lambda: catalog.serving("nope"))
    assert (err.status, err.code) == (404, "model_not_found")
    assert err.message == f"no model named 'nope' is served under alias 'production'; served: {[CLS, DET]}"
    err = _error(lambda: catalog.serving(CLS, "staging"))  # a model another alias serves
    assert err.code == "model_not_found" and "under alias 'staging'" in err.message
    err = _error(lambda: catalog.serving(DET, "canary"))
    assert (err.status, err.code) == (404, "alias_not_served")
    assert err.message == "alias 'canary' is not served; served aliases: ['production', 'staging']"
    err = _error(lambda: catalog.serving_version(DET, "0000"))
    assert (err.status, err.code) == (404, "version_not_served")
    assert str(sorted([prod, staging])) in err.message
    err = _error(lambda: catalog.serving_version("nope", prod))
    assert err.code == "model_not_found" and "under alias" not in err.message
    assert _error(lambda: catalog.require("nope")).code == "model_not_found"
    catalog.require(DET)


def test_an_alias_that_no_longer_points_at_the_model_is_model_not_found(production, versions):
    staging = versions[2]
    sources = AliasedSources(production, staging)
    watcher = _watch(sources)
    catalog = Catalog(watcher, "production", ["production", "staging"])
    assert catalog.serving(DET, "staging").version == versions[1]
    sources.sources.remove(staging)
    asyncio.run(watcher.poll_once())
    assert _error(lambda: catalog.serving(DET, "staging")).code == "model_not_found"
    assert catalog.describe(DET)["aliases"]["staging"] == {"version": None, "state": "loading",
                                                           "previous": versions[1]}


def test_a_version_that_cannot_load_is_model_unavailable(tmp_path):
    source = LocalFileSource([ModelEntry(name="gone", path=str(tmp_path / "missing.onnx"))])
    catalog = Catalog(_watch(source), "production", ["production"])
    err = _error(lambda: catalog.serving("gone"))
    assert (err.status, err.code, err.retry_after_s) == (503, "model_unavailable", "30")
    assert err.message.startswith("model 'gone'@production version missing cannot serve: FileNotFoundError")
    info = catalog.describe("gone")
    assert (info["state"], info["version"], info["task"]) == ("failed", None, None)
    assert info["aliases"]["production"]["failed_version"] == "missing"
    assert "no ONNX file" in info["error"]
    assert catalog.serving_states() == {"gone": "failed"}
    assert not catalog.ready


def test_a_version_being_prepared_is_model_loading(production):
    async def scenario():
        release = asyncio.Event()

        async def prepare(resolved):
            await release.wait()

        watcher = AliasWatcher(production, prepare, poll_interval_s=60.0)
        catalog = Catalog(watcher, "production", ["production"])
        poll = asyncio.create_task(watcher.poll_once())
        for _ in range(500):  # the detector, listed first, is the one held in prepare
            if ("production", DET) in watcher.states:
                break
            await asyncio.sleep(0.01)
        err = _error(lambda: catalog.serving(DET))
        assert (err.status, err.code, err.retry_after_s) == (503, "model_loading", "5")
        assert catalog.describe(DET)["state"] == "loading"
        release.set()
        await poll
        assert catalog.serving(DET).name == DET
        assert catalog.ready

    asyncio.run(scenario())


def test_describe_and_list(catalog, versions):
    prod, staging, _ = versions
    info = catalog.describe(DET)
    assert info == {"version": prod, "alias": "production", "state": "ready", "task": "detect",
                    "aliases": {"production": {"version": prod, "state": "ready", "previous": None},
                                "staging": {"version": staging, "state": "ready", "previous": None}}}
    assert catalog.describe(CLS)["aliases"].keys() == {"production"}
    assert catalog.describe("nope") == {"version": None, "alias": "production", "state": "not_served",
                                        "task": None, "aliases": {}}
    listed = catalog.list_models()
    assert [m["name"] for m in listed] == [CLS, DET]
    assert listed[1] == {"name": DET, "task": "detect", "version": prod, "state": "ready",
                         "aliases": info["aliases"]}
    assert catalog.serving_states() == {DET: "ready", CLS: "ready"}
    assert catalog.serving_keys() == {f"{DET}:{prod}", f"{CLS}:{catalog.serving(CLS).version}"}
    assert catalog.ready and catalog.registry_error is None


def test_metadata(catalog, versions):
    prod, staging, _ = versions
    assert catalog.metadata(DET) == {"name": DET, "task": "detect", "versions": sorted([prod, staging])}
    assert catalog.metadata(DET, staging) == {"name": DET, "task": "detect", "versions": [staging]}
    assert catalog.metadata(CLS)["task"] == "classify"
    assert _error(lambda: catalog.metadata(DET, "0000")).code == "version_not_served"


def test_the_data_plane_answers_with_its_catalog(production):
    from deployments.config import PipelineConfig
    from deployments.dataplane import DataPlane

    cfg = PipelineConfig(models=[ModelEntry(name=DET, path=str(DETECTOR)), ModelEntry(name=CLS, path=str(CLASSIFIER))])
    plane = DataPlane(cfg, None, _watch(production), decode_workers=1)
    assert (plane.catalog.serving_alias, plane.catalog.aliases) == ("production", ["production"])
    assert plane.serving(DET) is plane.catalog.serving(DET)
    assert plane.serving_version(DET, None) == plane.catalog.serving_version(DET, None)
    assert plane.names() == plane.catalog.names() == [CLS, DET]
    assert plane.describe(DET) == plane.catalog.describe(DET)
    assert plane.unknown("nope").code == "model_not_found"
