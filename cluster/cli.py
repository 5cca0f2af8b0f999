"""`visionray cluster ...` commands (argparse), calling into cluster/bringup.py."""

from __future__ import annotations

import argparse
import shlex
import sys

from cluster import labels


def _ray_args(value: str | None) -> list[str]:
    return shlex.split(value or "")


def _head(args: argparse.Namespace) -> int:
    from cluster import bringup

    return bringup.head(args.node_type, args.port, args.dashboard_host, args.dashboard_port,
                        _ray_args(args.ray_args), args.dry_run)


def _join(args: argparse.Namespace) -> int:
    from cluster import bringup, preflight

    assumed = None
    if args.assume_local_ray_version:
        assumed = preflight.Versions(ray=args.assume_local_ray_version, python=preflight.local_versions().python)
    return bringup.join(args.address, args.node_type, args.jetson_model, args.jetpack, args.serve_http_port,
                        _ray_args(args.ray_args), args.dry_run, assumed)


def _rayservice(args: argparse.Namespace) -> int:
    from cluster import rayservice

    text = rayservice.render(args.serve_config)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
    else:
        print(text, end="")
    return 0


def _refusing_bad_labels(run):
    def wrapped(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except labels.LabelError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    return wrapped


def add_cluster_commands(commands) -> None:
    group = commands.add_parser("cluster", help="start a Ray head or join a node (labels, pre-flight, token)")
    sub = group.add_subparsers(dest="cluster_command", metavar="COMMAND", required=True)

    p = sub.add_parser("head", help="start the head node (`ray start --head` with labels and token auth)")
    p.add_argument("--node-type", default=labels.DATACENTER, choices=labels.NODE_TYPES)
    p.add_argument("--port", type=int, default=6379, help="GCS port the nodes join (default 6379)")
    p.add_argument("--dashboard-host", default="0.0.0.0")
    p.add_argument("--dashboard-port", type=int, default=8265, help="dashboard and `serve deploy` address")
    p.add_argument("--dry-run", action="store_true", help="print the `ray start` command, start nothing")
    p.add_argument("--ray-args", help="more `ray start` options, one string (e.g. '--block --num-cpus=4')")
    p.set_defaults(run=_refusing_bad_labels(_head))

    p = sub.add_parser("join", help="pre-flight check, then join this node (`ray start --address`)")
    p.add_argument("address", help="the head's GCS address, HOST:PORT")
    p.add_argument("--node-type", required=True, choices=labels.NODE_TYPES)
    p.add_argument("--jetson-model", choices=labels.JETSON_MODELS, help="Jetsons: the module")
    p.add_argument("--jetpack", help="Jetsons: the JetPack version, e.g. 6.2")
    p.add_argument("--serve-http-port", type=int,
                   help="Serve proxy port on this node (default: the cluster's http_options.port)")
    p.add_argument("--dry-run", action="store_true", help="check and print the `ray start` command, start nothing")
    # Only for the test of a refused join: pretend this node runs another Ray.
    p.add_argument("--assume-local-ray-version", help=argparse.SUPPRESS)
    p.add_argument("--ray-args", help="more `ray start` options, one string (e.g. '--block --num-cpus=4')")
    p.set_defaults(run=_refusing_bad_labels(_join))

    p = sub.add_parser("rayservice", help="render the KubeRay RayService manifest from a serve config")
    p.add_argument("--serve-config", default=None, help="default: serve/config.yaml")
    p.add_argument("--output", "-o")
    p.set_defaults(run=_rayservice)
