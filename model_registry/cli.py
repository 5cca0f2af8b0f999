"""`visionray models ...`: register, promote, roll back and inspect models in the registry.

`add_models_commands` mounts the group on any argparse parser (the main `visionray` CLI);
`main` runs it standalone: `python -m model_registry.cli models list`.
Expected failures (a file that would not serve, an unknown version, an unreachable
server) print one line and exit 1; tracebacks are for bugs.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from mlflow.exceptions import MlflowException

from core.model_spec import PRESETS, read_labels_file
from model_registry import registry
from model_registry.registry import DEFAULT_ALIAS, RegistryError, VersionInfo

# Tags printed in this order by `show`; the spec JSON is summarised instead of dumped.
_SHOWN_TAGS = (
    registry.TAG_TASK,
    registry.TAG_PRESET,
    registry.TAG_LABELS_COUNT,
    registry.TAG_INPUT_SHAPE,
    registry.TAG_OUTPUT_SHAPE,
    registry.TAG_BATCH_MODE,
    registry.TAG_BATCH_INVARIANT,
    registry.TAG_SOURCE_FILE,
    registry.TAG_SHA256,
)


def _registry_options() -> argparse.ArgumentParser:
    # SUPPRESS: given before or after the subcommand, neither default overwrites the other.
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "--tracking-uri", default=argparse.SUPPRESS,
        help="MLflow tracking/registry URI, e.g. http://127.0.0.1:5000 "
        "(default: $MLFLOW_TRACKING_URI, else the embedded sqlite registry under --data-dir)",
    )
    options.add_argument(
        "--data-dir", default=argparse.SUPPRESS,
        help=f"data dir of the embedded registry (default: {registry.default_data_dir()})",
    )
    return options


def add_models_commands(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `models` command group; each leaf sets `args.handler`."""
    options = _registry_options()
    models = subparsers.add_parser(
        "models", parents=[options], help="the model registry (MLflow)",
        description="Register ONNX models, move aliases, roll back.",
    )
    commands = models.add_subparsers(dest="models_command", metavar="COMMAND", required=True)

    p = commands.add_parser(
        "register", parents=[options], help="validate an ONNX file and add it as a new version",
        description="For a `yolo export` file only --name is needed; the rest is read from the file.",
    )
    p.add_argument("path", help="the .onnx file")
    p.add_argument("--name", required=True, help="registered model name")
    p.add_argument("--task", choices=("detect", "classify"), help="default: from the file's metadata or output shape")
    p.add_argument("--preset", choices=PRESETS, help="preprocessing (default: letterbox for detect, else imagenet)")
    p.add_argument("--labels", metavar="FILE", help="labels file: one per line, or JSON (default: names in the file)")
    p.add_argument("--alias", help="also point this alias at the new version (e.g. staging)")
    p.set_defaults(handler=_register)

    p = commands.add_parser("promote", parents=[options], help="point an alias at a version")
    p.add_argument("name")
    p.add_argument("version")
    p.add_argument("--alias", default=DEFAULT_ALIAS, help=f"default: {DEFAULT_ALIAS}")
    p.set_defaults(handler=_promote)

    p = commands.add_parser("rollback", parents=[options], help="point an alias back at its previous version")
    p.add_argument("name")
    p.add_argument("--alias", default=DEFAULT_ALIAS, help=f"default: {DEFAULT_ALIAS}")
    p.set_defaults(handler=_rollback)

    p = commands.add_parser("list", parents=[options], help="registered models with aliases and latest version")
    p.set_defaults(handler=_list)

    p = commands.add_parser("show", parents=[options], help="one model: versions, tags, aliases, alias history")
    p.add_argument("name")
    p.set_defaults(handler=_show)
    return models


def _tracking_uri(args: argparse.Namespace) -> str:
    return registry.resolve_tracking_uri(getattr(args, "tracking_uri", None), getattr(args, "data_dir", None))


def _aliases_text(aliases: dict[str, str] | list[str]) -> str:
    if isinstance(aliases, dict):
        return ", ".join(f"{a}->v{v}" for a, v in aliases.items()) or "-"
    return ", ".join(aliases) or "-"


def _version_line(v: VersionInfo) -> str:
    task, labels = v.tags.get(registry.TAG_TASK, "?"), v.tags.get(registry.TAG_LABELS_COUNT, "?")
    invariant, sha256 = v.tags.get(registry.TAG_BATCH_INVARIANT, "?"), v.tags.get(registry.TAG_SHA256, "?")
    return f"{v.name} version {v.version}: {task}, {labels} labels, batch_invariant={invariant}, sha256 {sha256[:12]}"


def _register(args: argparse.Namespace) -> None:
    try:
        labels = read_labels_file(args.labels) if args.labels else None
    except (OSError, ValueError, SyntaxError) as exc:
        raise RegistryError(f"cannot read labels file {args.labels}: {exc}") from None
    v = registry.register(
        args.path, args.name, task=args.task, preset=args.preset, labels=labels, alias=args.alias,
        tracking_uri=_tracking_uri(args),
    )
    print(f"registered {_version_line(v)}")
    if args.alias:
        print(f"alias {args.alias} -> version {v.version}")


def _promote(args: argparse.Namespace) -> None:
    v = registry.promote(args.name, args.version, alias=args.alias, tracking_uri=_tracking_uri(args))
    print(f"{args.name}@{args.alias} -> version {v.version}")


def _rollback(args: argparse.Namespace) -> None:
    v = registry.rollback(args.name, alias=args.alias, tracking_uri=_tracking_uri(args))
    print(f"{args.name}@{args.alias} rolled back -> version {v.version}")


def _list(args: argparse.Namespace) -> None:
    models = registry.list_models(tracking_uri=_tracking_uri(args))
    if not models:
        print("no registered models")
        return
    rows = [("NAME", "TASK", "LATEST", "ALIASES")]
    rows += [(m.name, m.task or "-", m.latest_version or "-", _aliases_text(m.aliases)) for m in models]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[3])


def _show(args: argparse.Namespace) -> None:
    details = registry.show(args.name, tracking_uri=_tracking_uri(args))
    print(f"model {details.name}")
    print(f"  aliases: {_aliases_text(details.aliases)}")
    for alias, history in details.alias_history.items():
        print(f"  history of {alias}: {' -> '.join(f'v{v}' for v in history) or '-'}")
    for v in details.versions:
        print(f"version {v.version}  created {v.created:%Y-%m-%d %H:%M:%S} UTC  aliases: {_aliases_text(v.aliases)}")
        for key in _SHOWN_TAGS:
            if key in v.tags:
                print(f"  {key.removeprefix(registry.TAG_PREFIX)}: {v.tags[key]}")
        if (spec := v.spec) is not None:
            print(f"  spec: input {spec.input_name} {spec.preprocessing.mode} {spec.preprocessing.height}x"
                  f"{spec.preprocessing.width}, output {spec.output_name}, conf {spec.conf}, iou {spec.iou}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="visionray", description="visionray model registry commands")
    add_models_commands(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    return parser


def run_command(args: argparse.Namespace) -> int:
    """Run a parsed `models ...` command; the exit status (1 with a one-line message on expected errors)."""
    # MLflow logs routine INFO lines (database set-up, waiting for versions) to stderr.
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    try:
        args.handler(args)
    except (RegistryError, MlflowException, OSError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"error: {message}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
