"""The model registry: validated ONNX versions in MLflow, aliases that move, a per-node cache.

Why this shape:
- Only files that would serve get a version. `register` builds the spec, loads the file in
  ONNX Runtime, runs samples and checks the output shape *before* it writes anything, so a
  bad file never becomes a version that an alias could point at.
- What serving needs to know about a version (task, spec, sha256, batch invariance) is
  recorded as model-version tags, so a replica learns it with one registry call and
  without downloading the file first.
- Aliases (`models:/yolo@production`), never stages (deprecated since MLflow 2.9).
  MLflow keeps no alias history, so `promote` records each move in a registered-model tag
  and `rollback` walks it back, as many steps as there were promotions.
- Replicas resolve the alias once, then download by *version* into a cache keyed by name
  and version: the alias can move mid-download without mixing two versions, and a cached
  version never needs the registry again.

Nothing here touches MLflow's global state (`mlflow.set_tracking_uri` also rewrites
`MLFLOW_TRACKING_URI` in `os.environ`): every call builds a client for an explicit URI.
`models:/...` URIs resolve through the *global* registry URI in MLflow 3.17, so downloads
go through `get_model_version_download_uri` instead.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import mlflow.artifacts
import mlflow.onnx
import onnx
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    INVALID_PARAMETER_VALUE,
    RESOURCE_ALREADY_EXISTS,
    RESOURCE_DOES_NOT_EXIST,
    ErrorCode,
)
from onnx.external_data_helper import uses_external_data

from core.model_spec import ModelSpec, Preprocessing, SpecError, Task, check_output_shape, spec_from_onnx
from core.onnx_backend import OnnxModel, sample_images
from core.paths import default_data_dir
from model_registry.source import file_sha256

DATABASE_FILENAME = "mlflow.db"
ARTIFACTS_DIRNAME = "mlartifacts"
EXPERIMENT_NAME = "visionray-registry"
MODEL_FILENAME = "model.onnx"
DEFAULT_ALIAS = "production"
# Enough to roll back a long way; keeps the tag small.
MAX_ALIAS_HISTORY = 100

# Model-version tags, written once by `register`.
TAG_PREFIX = "visionray."
TAG_TASK = "visionray.task"
TAG_SPEC = "visionray.spec"  # ModelSpec JSON
TAG_PRESET = "visionray.preset"
TAG_LABELS_COUNT = "visionray.labels_count"
TAG_INPUT_SHAPE = "visionray.input_shape"  # JSON list, null for symbolic dims
TAG_OUTPUT_SHAPE = "visionray.output_shape"
TAG_SHA256 = "visionray.sha256"
TAG_SOURCE_FILE = "visionray.source_file"
TAG_BATCH_INVARIANT = "visionray.batch_invariant"  # "true" / "false"
TAG_BATCH_MODE = "visionray.batch_mode"  # native / rewritten / per_item
# Registered-model tag: JSON list of versions the alias pointed at, oldest first, current last.
ALIAS_HISTORY_TAG_PREFIX = "visionray.alias_history."


class RegistryError(RuntimeError):
    """An expected failure with a message fit to show a user as is."""


class ValidationError(RegistryError):
    """The file is not a servable model; nothing was written to the registry."""


# -- where the registry lives ---------------------------------------------------------------
def default_tracking_uri(data_dir: str | Path | None = None) -> str:
    """The embedded registry: a sqlite file under the data dir (artifacts beside it)."""
    data_dir = Path(data_dir or default_data_dir()).resolve()
    return f"sqlite:///{data_dir / DATABASE_FILENAME}"


def resolve_tracking_uri(tracking_uri: str | None = None, data_dir: str | Path | None = None) -> str:
    """The one place that decides the registry URI (and the only reader of $MLFLOW_TRACKING_URI).

    An explicit URI wins; an explicit data dir means its embedded registry; otherwise
    $MLFLOW_TRACKING_URI if set, else the embedded registry in the project's data dir.
    """
    if tracking_uri:
        return tracking_uri
    if data_dir is None and (from_env := os.environ.get("MLFLOW_TRACKING_URI")):
        return from_env
    return default_tracking_uri(data_dir)


def sqlite_path(tracking_uri: str) -> Path | None:
    prefix = "sqlite:///"
    return Path(tracking_uri[len(prefix):]) if tracking_uri.startswith(prefix) else None


def _client(tracking_uri: str | None) -> MlflowClient:
    uri = resolve_tracking_uri(tracking_uri)
    if (db := sqlite_path(uri)) is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _registry_experiment_id(client: MlflowClient) -> str:
    """Our experiment; with sqlite its artifacts go beside the database, never into the CWD.

    (A sqlite backend without a server otherwise puts artifacts under ./mlruns.) Through an
    `mlflow server` the server chooses: its `--artifacts-destination`.
    """
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    if experiment is not None:
        return experiment.experiment_id
    db = sqlite_path(client.tracking_uri)
    artifact_location = (db.parent / ARTIFACTS_DIRNAME).resolve().as_uri() if db else None
    try:
        return client.create_experiment(EXPERIMENT_NAME, artifact_location=artifact_location)
    except MlflowException as exc:  # created concurrently by another process
        if exc.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise
        return client.get_experiment_by_name(EXPERIMENT_NAME).experiment_id


def _is_missing(exc: MlflowException) -> bool:
    return exc.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST)


def _model_version(client: MlflowClient, name: str, version: str | int) -> ModelVersion:
    try:
        return client.get_model_version(name, str(version))
    except MlflowException as exc:
        if _is_missing(exc):
            raise RegistryError(f"model {name!r} has no version {version}") from None
        raise


# -- what the registry returns ------------------------------------------------------------
@dataclass(frozen=True)
class VersionInfo:
    name: str
    version: str
    aliases: list[str]
    tags: dict[str, str]
    created: datetime
    source: str

    @classmethod
    def from_mlflow(cls, mv: ModelVersion, aliases: list[str] | None = None) -> VersionInfo:
        """`aliases` overrides mv.aliases, which version searches leave empty."""
        return cls(
            name=mv.name,
            version=str(mv.version),
            aliases=sorted(mv.aliases or [] if aliases is None else aliases),
            tags=dict(mv.tags or {}),
            created=datetime.fromtimestamp(mv.creation_timestamp / 1000, tz=timezone.utc),
            source=mv.source,
        )

    @property
    def spec(self) -> ModelSpec | None:
        return spec_from_tags(self.tags)


@dataclass(frozen=True)
class ModelSummary:
    name: str
    aliases: dict[str, str]
    latest_version: str | None
    task: str | None


@dataclass(frozen=True)
class ModelDetails:
    name: str
    aliases: dict[str, str]
    alias_history: dict[str, list[int]]
    versions: list[VersionInfo] = field(default_factory=list)


def spec_from_tags(tags: dict[str, str]) -> ModelSpec | None:
    """The ModelSpec `register` recorded on a version (None for versions registered otherwise)."""
    raw = tags.get(TAG_SPEC)
    return ModelSpec.model_validate_json(raw) if raw else None


# -- register ---------------------------------------------------------------------------
_PRESET_OF_MODE = {"letterbox": "letterbox", "center_crop": "imagenet", "resize": "resize"}


def _preset_name(preprocessing: Preprocessing) -> str:
    return _PRESET_OF_MODE[preprocessing.mode]


def validate_model_file(
    path: str | Path, task: Task | None = None, preset: str | None = None, labels: list[str] | None = None
) -> tuple[ModelSpec, OnnxModel]:
    """Everything `register` checks, with no registry involved. Raises ValidationError."""
    path = Path(path)
    if not path.is_file():
        raise ValidationError(f"no ONNX file at {path}")
    try:
        spec = spec_from_onnx(path, task=task, preset_name=preset, labels=labels)
    except SpecError as exc:
        raise ValidationError(f"{path.name}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - onnx raises several types for unreadable files
        raise ValidationError(f"{path.name}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None
    try:
        # Loads the session, makes and verifies the batch copy, checks the output shape on a sample.
        model = OnnxModel(path, spec)
        output = model.run(sample_images(spec, 1, seed=4))
        check_output_shape(spec, output.shape)
    except SpecError as exc:
        raise ValidationError(f"{path.name}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - any onnxruntime failure means "will not serve"
        raise ValidationError(f"{path.name}: does not run in ONNX Runtime ({type(exc).__name__}: {exc})") from None
    return spec, model


def _version_tags(path: Path, spec: ModelSpec, model: OnnxModel) -> dict[str, str]:
    """All tags but the sha256, which is taken from the file as stored."""
    return {
        TAG_TASK: spec.task,
        TAG_SPEC: spec.model_dump_json(),
        TAG_PRESET: _preset_name(spec.preprocessing),
        TAG_LABELS_COUNT: str(len(spec.labels)),
        TAG_INPUT_SHAPE: json.dumps(spec.input_shape),
        TAG_OUTPUT_SHAPE: json.dumps(spec.output_shape),
        TAG_SOURCE_FILE: path.name,
        TAG_BATCH_INVARIANT: "true" if model.batch_invariant else "false",
        TAG_BATCH_MODE: model.batch_mode,
    }


def _write_flavor_dir(path: Path, out_dir: Path) -> Path:
    """MLflow's ONNX flavor layout (MLmodel, model.onnx, env files); `mlflow.onnx.load_model` reads it.

    A self-contained file is stored byte for byte, so its sha256 is the original file's.
    Weights kept in side files (ONNX external data) are embedded: the cache holds one file.
    """
    header = onnx.load(str(path), load_external_data=False)
    self_contained = not any(uses_external_data(t) for t in header.graph.initializer)
    flavor_dir = out_dir / "model"
    model = header if self_contained else onnx.load(str(path))
    mlflow.onnx.save_model(model, str(flavor_dir), save_as_external_data=False)
    if self_contained:
        shutil.copyfile(path, flavor_dir / MODEL_FILENAME)
    return flavor_dir


def register(
    path: str | Path,
    name: str,
    task: Task | None = None,
    preset: str | None = None,
    labels: list[str] | None = None,
    alias: str | None = None,
    tracking_uri: str | None = None,
) -> VersionInfo:
    """Validate `path`, then store it as the next version of `name`; optionally point `alias` at it.

    For a `yolo export` file only `name` is needed: everything else is read from the file.
    """
    path = Path(path).resolve()
    spec, model = validate_model_file(path, task, preset, labels)
    tags = _version_tags(path, spec, model)
    del model  # frees the sessions before the upload

    with tempfile.TemporaryDirectory(prefix="visionray-register-") as tmp:
        flavor_dir = _write_flavor_dir(path, Path(tmp))
        tags[TAG_SHA256] = file_sha256(flavor_dir / MODEL_FILENAME)
        # First registry write: everything above was local.
        client = _client(tracking_uri)
        experiment_id = _registry_experiment_id(client)
        logged = client.create_logged_model(experiment_id, name=name, tags={TAG_SOURCE_FILE: path.name})
        try:
            client.log_model_artifacts(logged.model_id, str(flavor_dir))
        except BaseException:
            client.finalize_logged_model(logged.model_id, "FAILED")
            raise
    client.finalize_logged_model(logged.model_id, "READY")

    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise
    # source = the concrete artifact location. An `mlflow server` accepts that only with the
    # logged model's id; a local sqlite store given an id looks the model up through the
    # *global* tracking URI (maybe another database), so there the id is left out.
    model_id = None if sqlite_path(client.tracking_uri) else logged.model_id
    mv = client.create_model_version(name, source=logged.artifact_location, model_id=model_id, tags=tags)
    if alias:
        promote(name, mv.version, alias, tracking_uri=client.tracking_uri)
        mv = client.get_model_version(name, mv.version)
    return VersionInfo.from_mlflow(mv)


# -- aliases ----------------------------------------------------------------------------------
def _history_tag(alias: str) -> str:
    return f"{ALIAS_HISTORY_TAG_PREFIX}{alias}"


def _registered_model(client: MlflowClient, name: str):
    try:
        return client.get_registered_model(name)
    except MlflowException as exc:
        if _is_missing(exc):
            raise RegistryError(f"no registered model named {name!r}") from None
        raise


def _alias_history(client: MlflowClient, name: str, alias: str) -> tuple[list[int], str | None]:
    """The alias's recorded history reconciled with where it points now, and that version (None: unset).

    If someone moved the alias outside this module, its current version is appended, so
    rollback still goes back from what is actually live.
    """
    model = _registered_model(client, name)
    history = [int(v) for v in json.loads(model.tags.get(_history_tag(alias), "[]"))]
    current = model.aliases.get(alias)
    if current is not None and (not history or history[-1] != int(current)):
        history.append(int(current))
    return history, current


def _save_history(client: MlflowClient, name: str, alias: str, history: list[int]) -> None:
    client.set_registered_model_tag(name, _history_tag(alias), json.dumps(history[-MAX_ALIAS_HISTORY:]))


def promote(name: str, version: str | int, alias: str = DEFAULT_ALIAS, tracking_uri: str | None = None) -> VersionInfo:
    """Point `alias` at `version` and remember where it pointed before."""
    client = _client(tracking_uri)
    history, current = _alias_history(client, name, alias)
    mv = _model_version(client, name, version)
    if current is None or int(current) != int(mv.version):
        client.set_registered_model_alias(name, alias, mv.version)
        history.append(int(mv.version))
        _save_history(client, name, alias, history)
    return VersionInfo.from_mlflow(client.get_model_version(name, mv.version))


def rollback(name: str, alias: str = DEFAULT_ALIAS, tracking_uri: str | None = None) -> VersionInfo:
    """Point `alias` back at the version it pointed at before the last promotion."""
    client = _client(tracking_uri)
    history, current = _alias_history(client, name, alias)
    if current is None:
        raise RegistryError(f"alias {alias!r} of model {name!r} is not set; nothing to roll back")
    history.pop()  # the current version
    while history:
        try:
            mv = client.get_model_version(name, str(history[-1]))
            break
        except MlflowException as exc:
            if not _is_missing(exc):
                raise
            history.pop()  # that version was deleted; go further back
    else:
        raise RegistryError(f"alias {alias!r} of model {name!r} has no earlier version to roll back to")
    client.set_registered_model_alias(name, alias, mv.version)
    _save_history(client, name, alias, history)
    return VersionInfo.from_mlflow(client.get_model_version(name, mv.version))


def resolve_alias(name: str, alias: str = DEFAULT_ALIAS, tracking_uri: str | None = None) -> tuple[str, dict[str, str]]:
    """(version, model-version tags) the alias points at now. One registry call."""
    client = _client(tracking_uri)
    try:
        mv = client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        # A missing model is RESOURCE_DOES_NOT_EXIST, a missing alias INVALID_PARAMETER_VALUE.
        if _is_missing(exc) or exc.error_code == ErrorCode.Name(INVALID_PARAMETER_VALUE):
            raise RegistryError(f"model {name!r} has no alias {alias!r} ({exc.message})") from None
        raise
    return str(mv.version), dict(mv.tags or {})


# -- list / show --------------------------------------------------------------------------
def _versions_newest_first(client: MlflowClient, name: str, max_results: int | None = None) -> list[ModelVersion]:
    kwargs = {"max_results": max_results} if max_results else {}
    return list(client.search_model_versions(f"name = '{name}'", order_by=["version_number DESC"], **kwargs))


def list_models(tracking_uri: str | None = None) -> list[ModelSummary]:
    client = _client(tracking_uri)
    summaries = []
    for model in client.search_registered_models(max_results=1000, order_by=["name ASC"]):
        latest = _versions_newest_first(client, model.name, max_results=1)
        summaries.append(
            ModelSummary(
                name=model.name,
                aliases={a: str(v) for a, v in sorted(model.aliases.items())},
                latest_version=str(latest[0].version) if latest else None,
                task=latest[0].tags.get(TAG_TASK) if latest else None,
            )
        )
    return summaries


def show(name: str, tracking_uri: str | None = None) -> ModelDetails:
    client = _client(tracking_uri)
    model = _registered_model(client, name)
    history = {
        key[len(ALIAS_HISTORY_TAG_PREFIX):]: json.loads(value)
        for key, value in sorted(model.tags.items())
        if key.startswith(ALIAS_HISTORY_TAG_PREFIX)
    }
    aliases = {a: str(v) for a, v in sorted(model.aliases.items())}
    versions = [
        VersionInfo.from_mlflow(mv, aliases=[a for a, v in aliases.items() if v == str(mv.version)])
        for mv in _versions_newest_first(client, name)
    ]
    return ModelDetails(name=model.name, aliases=aliases, alias_history=history, versions=versions)


# -- per-node cache -----------------------------------------------------------------------
def cached_model_path(cache_dir: str | Path, name: str, version: str | int) -> Path:
    return Path(cache_dir) / name / str(version) / MODEL_FILENAME


@contextmanager
def _exclusive_lock(lock_path: Path) -> Iterator[None]:
    """One holder per node (flock is per open file, so it also works between threads)."""
    with open(lock_path, "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def download_version(
    name: str, version: str | int, cache_dir: str | Path, tracking_uri: str | None = None
) -> Path:
    """Path of `model.onnx` for this version, downloading it into the node's cache once.

    A cached version is returned without contacting the registry. Otherwise one process
    per node downloads (the others wait on a file lock and then find it cached) into a
    temp dir inside the cache, checks sha256 against the registered tag, and renames the
    directory into place, so a reader never sees a partial `<cache>/<name>/<version>/`.
    """
    version = str(int(version))
    target = cached_model_path(cache_dir, name, version)
    if target.is_file():
        return target
    model_cache = target.parent.parent
    model_cache.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(model_cache / f".{version}.lock"):
        if target.is_file():  # another process finished while we waited
            return target
        client = _client(tracking_uri)
        expected_sha256 = _model_version(client, name, version).tags.get(TAG_SHA256)
        download_uri = client.get_model_version_download_uri(name, version)
        for stale in model_cache.glob(f".{version}.download-*"):  # left by a killed process; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{version}.download-", dir=model_cache))
        try:
            local = Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=download_uri, dst_path=str(staging), tracking_uri=client.tracking_uri
                )
            )
            if not (local / MODEL_FILENAME).is_file():
                raise RegistryError(f"{name} version {version} has no {MODEL_FILENAME} at {download_uri}")
            if expected_sha256 and file_sha256(local / MODEL_FILENAME) != expected_sha256:
                raise RegistryError(f"{name} version {version}: downloaded {MODEL_FILENAME} does not match its sha256")
            if target.parent.exists():  # a leftover without model.onnx (someone deleted the file)
                shutil.rmtree(target.parent)
            os.rename(local, target.parent)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target
