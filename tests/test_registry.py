"""The model registry against real MLflow: embedded sqlite and a real `mlflow server` subprocess."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import mlflow.artifacts
import pytest
from mlflow import MlflowClient

from core.onnx_backend import OnnxModel, sample_images
from model_registry import registry
from model_registry.cli import main
from model_registry.mlflow_server import running_mlflow_server
from model_registry.registry import RegistryError, ValidationError
from model_registry.source import file_sha256
from tests.conftest_registry_helpers import download_and_count, write_3d_output_model, write_classifier
from tests.models import REPO as REPO_ROOT
from tests.models import YOLO_DYNAMIC as DYNAMIC_MODEL  # dynamic quantization: not batch-invariant
from tests.models import YOLO_QDQ as QDQ_MODEL  # static QDQ: batch-invariant
from tests.models import needs_shared_models

VENV_PYTHON = REPO_ROOT / ".venv" / "bin" / "python"
PYTHON = str(VENV_PYTHON if VENV_PYTHON.exists() else sys.executable)


@pytest.fixture(autouse=True)
def no_ambient_tracking_uri(monkeypatch):
    """Every test names its registry; a developer's MLFLOW_TRACKING_URI must not leak in."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture
def data_dir(tmp_path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def uri(data_dir) -> str:
    return registry.default_tracking_uri(data_dir)


@pytest.fixture
def classifier(tmp_path) -> Path:
    return write_classifier(tmp_path / "classifier.onnx")


def version_numbers(name: str, uri: str) -> list[str]:
    return [str(v.version) for v in MlflowClient(uri, uri).search_model_versions(f"name = '{name}'")]


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return {**env, "PYTHONPATH": str(REPO_ROOT), **extra}


# -- embedded sqlite registry ------------------------------------------------------------------
def test_default_uri_is_sqlite_under_the_project_data_dir():
    assert registry.default_tracking_uri() == f"sqlite:///{REPO_ROOT / '.data' / 'mlflow.db'}"
    assert registry.resolve_tracking_uri("http://h:5000", "/x") == "http://h:5000"


def test_env_tracking_uri_is_honoured_unless_a_data_dir_is_given(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://registry:5000")
    assert registry.resolve_tracking_uri() == "http://registry:5000"
    assert registry.resolve_tracking_uri(data_dir=tmp_path) == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"


@needs_shared_models
def test_shared_yolo_models_record_task_labels_sha_and_batch_invariance(uri, data_dir):
    qdq = registry.register(QDQ_MODEL, "yolov8n", tracking_uri=uri)
    dynamic = registry.register(DYNAMIC_MODEL, "yolov8n", tracking_uri=uri)

    assert (qdq.version, dynamic.version) == ("1", "2")
    assert qdq.tags[registry.TAG_BATCH_INVARIANT] == "true"
    assert dynamic.tags[registry.TAG_BATCH_INVARIANT] == "false"
    for info, path in ((qdq, QDQ_MODEL), (dynamic, DYNAMIC_MODEL)):
        tags = info.tags
        assert tags[registry.TAG_TASK] == "detect"
        assert tags[registry.TAG_LABELS_COUNT] == "80"
        assert tags[registry.TAG_SHA256] == file_sha256(path)
        assert tags[registry.TAG_SOURCE_FILE] == path.name
        assert tags[registry.TAG_PRESET] == "letterbox"
        assert tags[registry.TAG_INPUT_SHAPE] == "[1, 3, 640, 640]"
        assert tags[registry.TAG_OUTPUT_SHAPE] == "[1, 84, 8400]"
        assert tags[registry.TAG_BATCH_MODE] == "rewritten"
        spec = info.spec
        assert spec.task == "detect" and len(spec.labels) == 80 and spec.labels[5] == "bus"
    assert qdq.tags[registry.TAG_SHA256] == "5d5fcea63f9cea86f95b8156a3a22ac2fe48c31f10138c6d9679cc77f75d2a6a"

    # The file is stored, in the ONNX flavor layout, beside the database.
    path = registry.download_version("yolov8n", 1, data_dir / "cache", tracking_uri=uri)
    assert file_sha256(path) == qdq.tags[registry.TAG_SHA256]
    assert (path.parent / "MLmodel").is_file()
    assert len(list((data_dir / "mlartifacts").rglob("model.onnx"))) == 2


def test_invalid_files_are_refused_before_anything_is_written(tmp_path, data_dir, uri, classifier):
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"this is not an ONNX protobuf" * 100)

    with pytest.raises(ValidationError, match="not a readable ONNX model"):
        registry.register(corrupt, "clf", tracking_uri=uri)
    assert not data_dir.exists(), "validation must fail before the registry is even opened"

    registry.register(classifier, "clf", labels=["cat", "dog", "bird"], tracking_uri=uri)
    artifacts_before = sorted(p.relative_to(data_dir) for p in (data_dir / "mlartifacts").rglob("*"))

    refused = [
        (corrupt, {}, "not a readable ONNX model"),
        (write_3d_output_model(tmp_path / "3d.onnx"), {"task": "classify"}, r"output has shape \[1, 7, 5\]"),
        (classifier, {"labels": ["cat", "dog"]}, "2 labels given but the model outputs 3 classes"),
        # Declares [1, 3] but computes [1, 5]: only running a sample can tell.
        (write_classifier(tmp_path / "lies.onnx", classes=5, declared_classes=3), {}, r"output has shape \[1, 5\]"),
        (tmp_path / "missing.onnx", {}, "no ONNX file"),
    ]
    for path, options, message in refused:
        with pytest.raises(ValidationError, match=message):
            registry.register(path, "clf", tracking_uri=uri, **options)
        with pytest.raises(ValidationError):
            registry.register(path, "never-registered", tracking_uri=uri, **options)

    assert version_numbers("clf", uri) == ["1"]
    assert [m.name for m in registry.list_models(uri)] == ["clf"]
    assert sorted(p.relative_to(data_dir) for p in (data_dir / "mlartifacts").rglob("*")) == artifacts_before


def test_promote_and_rollback_walk_the_alias_history(tmp_path, uri):
    for seed in range(3):
        registry.register(write_classifier(tmp_path / f"c{seed}.onnx", seed=seed), "clf", tracking_uri=uri)

    for version in (1, 2, 3):
        assert registry.promote("clf", version, tracking_uri=uri).aliases == ["production"]
    assert registry.promote("clf", 3, tracking_uri=uri).version == "3"  # already there: not a new history entry
    assert registry.show("clf", uri).alias_history == {"production": [1, 2, 3]}

    assert registry.rollback("clf", tracking_uri=uri).version == "2"
    assert registry.resolve_alias("clf", "production", tracking_uri=uri)[0] == "2"
    assert registry.rollback("clf", tracking_uri=uri).version == "1"
    with pytest.raises(RegistryError, match="no earlier version"):
        registry.rollback("clf", tracking_uri=uri)
    assert registry.resolve_alias("clf", tracking_uri=uri)[0] == "1"

    # An alias moved behind our back is still where rollback starts from.
    MlflowClient(uri, uri).set_registered_model_alias("clf", "production", "3")
    assert registry.rollback("clf", tracking_uri=uri).version == "1"

    # Aliases are independent; each has its own history.
    registry.promote("clf", 2, alias="staging", tracking_uri=uri)
    details = registry.show("clf", uri)
    assert details.aliases == {"production": "1", "staging": "2"}
    assert details.alias_history == {"production": [1], "staging": [2]}
    assert [v.version for v in details.versions] == ["3", "2", "1"]
    assert details.versions[1].aliases == ["staging"]
    assert details.versions[0].tags[registry.TAG_TASK] == "classify"

    [summary] = registry.list_models(uri)
    assert (summary.name, summary.latest_version, summary.task) == ("clf", "3", "classify")
    assert summary.aliases == {"production": "1", "staging": "2"}

    with pytest.raises(RegistryError, match="has no version 9"):
        registry.promote("clf", 9, tracking_uri=uri)
    with pytest.raises(RegistryError, match="no registered model named 'nope'"):
        registry.promote("nope", 1, tracking_uri=uri)
    with pytest.raises(RegistryError, match="has no alias 'canary'"):
        registry.resolve_alias("clf", "canary", tracking_uri=uri)
    with pytest.raises(RegistryError, match="is not set"):
        registry.rollback("clf", alias="canary", tracking_uri=uri)


def test_register_with_alias_starts_the_history(uri, classifier):
    info = registry.register(classifier, "clf", alias="staging", tracking_uri=uri)
    assert info.aliases == ["staging"]
    assert registry.show("clf", uri).alias_history == {"staging": [1]}


def test_download_refuses_a_file_whose_sha256_differs_and_caches_nothing(tmp_path, uri, classifier):
    registry.register(classifier, "clf", tracking_uri=uri)
    MlflowClient(uri, uri).set_model_version_tag("clf", "1", registry.TAG_SHA256, "0" * 64)
    cache = tmp_path / "cache"
    with pytest.raises(RegistryError, match="does not match its sha256"):
        registry.download_version("clf", 1, cache, tracking_uri=uri)
    assert sorted(p.name for p in (cache / "clf").iterdir()) == [".1.lock"]


# -- CLI ----------------------------------------------------------------------------------
def test_cli_commands(tmp_path, data_dir, uri, classifier, capsys):
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\nbird\n")

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(["models", *argv])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, _ = run("register", str(classifier), "--name", "clf", "--labels", str(labels),
                       "--alias", "production", "--data-dir", str(data_dir))
    assert code == 0, out
    assert "registered clf version 1: classify, 3 labels, batch_invariant=true" in out
    assert "alias production -> version 1" in out
    other = write_classifier(tmp_path / "other.onnx", seed=1)
    assert run("register", str(other), "--name", "clf", "--labels", str(labels), "--tracking-uri", uri)[0] == 0

    code, out, _ = run("--tracking-uri", uri, "promote", "clf", "2")  # the option also goes before the command
    assert (code, out.strip()) == (0, "clf@production -> version 2")
    code, out, _ = run("list", "--tracking-uri", uri)
    assert out.splitlines()[1].split() == ["clf", "classify", "2", "production->v2"]
    code, out, _ = run("rollback", "clf", "--tracking-uri", uri)
    assert (code, out.strip()) == (0, "clf@production rolled back -> version 1")
    code, out, _ = run("show", "clf", "--tracking-uri", uri)
    assert "history of production: v1" in out and "version 2  created" in out
    assert "batch_invariant: true" in out and "labels_count: 3" in out

    for argv, message in [
        (("promote", "clf", "7"), "error: model 'clf' has no version 7"),
        (("rollback", "clf"), "error: alias 'production' of model 'clf' has no earlier version to roll back to"),
        (("show", "nope"), "error: no registered model named 'nope'"),
        (("register", str(tmp_path / "nope.onnx"), "--name", "x"), "error: no ONNX file at"),
        (("register", str(classifier), "--name", "x", "--labels", str(tmp_path / "nope.txt")), "error: cannot read"),
    ]:
        code, out, err = run(*argv, "--tracking-uri", uri)
        assert code == 1
        assert err.startswith(message) and len(err.strip().splitlines()) == 1, err


def test_cli_as_a_subprocess_honours_the_env_uri_and_leaves_the_cwd_alone(tmp_path, uri, classifier):
    registry.register(classifier, "clf", alias="production", tracking_uri=uri)
    cwd = tmp_path / "cwd"
    cwd.mkdir()

    listed = subprocess.run(
        [PYTHON, "-m", "model_registry.cli", "models", "list"],
        cwd=cwd, env=subprocess_env(MLFLOW_TRACKING_URI=uri), capture_output=True, text=True, timeout=120,
    )
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[1].split() == ["clf", "classify", "1", "production->v1"]

    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x00garbage" * 64)
    register_corrupt = ["models", "register", str(corrupt), "--name", "clf", "--tracking-uri", uri]
    refused = subprocess.run(
        [PYTHON, "-m", "model_registry.cli", *register_corrupt],
        cwd=cwd, env=subprocess_env(), capture_output=True, text=True, timeout=120,
    )
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: corrupt.onnx: not a readable ONNX model")
    assert "Traceback" not in refused.stderr
    assert list(cwd.iterdir()) == [], "nothing (mlruns/, mlflow.db) may land in the working directory"


# -- a real `mlflow server` ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as running:
        pgid = running.process.pid
        yield running
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)  # the launcher, uvicorn and any worker are all gone


def test_server_register_resolve_download_then_cache_only(server, tmp_path, classifier, monkeypatch):
    assert server.url.startswith("http://127.0.0.1:") and server.is_healthy()
    registered = registry.register(classifier, "served", labels=["a", "b", "c"], alias="production",
                                   tracking_uri=server.url)
    assert registered.source.startswith("mlflow-artifacts:/")

    version, tags = registry.resolve_alias("served", "production", tracking_uri=server.url)
    assert version == registered.version
    cache = tmp_path / "cache"
    path = registry.download_version("served", version, cache, tracking_uri=server.url)
    assert path == cache / "served" / version / "model.onnx"
    assert file_sha256(path) == tags[registry.TAG_SHA256]
    spec = registry.spec_from_tags(tags)
    assert spec.labels == ["a", "b", "c"]
    assert OnnxModel(path, spec).run(sample_images(spec, 2)).shape == (2, 3)

    # Cached: served from disk; a dead registry is never contacted.
    assert registry.download_version("served", version, cache, tracking_uri="http://127.0.0.1:9") == path

    # Plain MLflow clients can fetch the version by URI.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    plain = mlflow.artifacts.download_artifacts(f"models:/served/{version}", dst_path=str(tmp_path / "plain"))
    assert file_sha256(Path(plain) / "model.onnx") == tags[registry.TAG_SHA256]


def test_two_processes_downloading_one_version_download_it_once(server, tmp_path, classifier):
    registry.register(classifier, "shared-dl", tracking_uri=server.url)
    cache, marker = tmp_path / "cache", tmp_path / "downloads.txt"
    spawn = multiprocessing.get_context("spawn")
    start_together, results = spawn.Barrier(2), spawn.Queue()
    workers = [
        spawn.Process(target=download_and_count,
                      args=("shared-dl", "1", str(cache), server.url, start_together, str(marker), results))
        for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    paths = [results.get(timeout=180) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)
        assert worker.exitcode == 0

    assert paths[0] == paths[1] == str(cache / "shared-dl" / "1" / "model.onnx")
    assert len(marker.read_text().splitlines()) == 1, "exactly one process downloaded"
    assert sorted(p.name for p in (cache / "shared-dl").iterdir()) == [".1.lock", "1"], "no staging dir left"


def test_a_lost_registry_never_empties_the_catalog_and_is_never_recreated(tmp_path, data_dir, uri, classifier):
    """A replica restarted while the sqlite store was moved away created a
    fresh empty store at that path and served nothing. Now: the store is never created, the
    cached catalog survives, the outage is reported, and the store is used again once back."""
    import asyncio

    from deployments.alias_watcher import AliasWatcher
    from model_registry.mlflow_source import CATALOG_FILE, MlflowSource
    from model_registry.source import RegistryUnavailable

    registry.register(classifier, name="colors", alias="production", tracking_uri=uri)
    cache = tmp_path / "cache"
    source = MlflowSource(uri, cache, ["production"])
    assert source.poll() == {"production": {"colors": "1"}}
    source.fetch("colors", "1")  # the node has served it: the file is in its cache
    db = registry.sqlite_path(uri)
    moved = db.with_name("moved-away.db")
    db.rename(moved)

    with pytest.raises(RegistryUnavailable) as err:
        MlflowSource(uri, cache, ["production"]).poll()  # a fresh replica's first poll
    assert "does not exist" in str(err.value) and err.value.cached == {"production": {"colors": "1"}}
    assert not db.exists(), "a serving replica must never create a registry"
    assert (cache / CATALOG_FILE).is_file()

    prepared = []

    async def prepare(resolved):
        prepared.append(resolved.key)

    watcher = AliasWatcher(MlflowSource(uri, cache, ["production"]), prepare, poll_interval_s=1)
    asyncio.run(watcher.poll_once())
    assert prepared == ["colors:1"] and watcher.ready  # served from the cache
    assert "does not exist" in watcher.registry_error
    assert not db.exists()

    moved.rename(db)  # the store is back: same watcher, no restart
    asyncio.run(watcher.poll_once())
    assert watcher.registry_error is None and watcher.serving["production"]["colors"].version == "1"
