"""``detect ops``: the proxy's operator surface (``detect.v1.Operations``) from the shell.

    detect ops groups                           # groups, replicas, what each serves
    detect ops load object_detector --group gpu-b
    detect ops unload face_detector --group gpu-a
    detect ops experiments                      # variants, weights, what the guard took out
    detect ops restore object_detector candidate   # put a guarded variant back

Through Envoy's front only an operator identity may call it (mTLS: --cert-file/--key-file of
a client Envoy lists with --operator-client); on the proxy's host, ``--plaintext --target
127.0.0.1:50051`` reaches a proxy directly. To move a model, load it on the new group first,
then unload it from the old one: calls for it then never find it missing.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import grpc

from detect.v1 import operations_pb2, operations_pb2_grpc
from detect_client.cli import _error, add_connection_options, connection, to_dict

GROUPS, LOAD, UNLOAD = "groups", "load", "unload"
EXPERIMENTS, RESTORE = "experiments", "restore"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="detect ops", description=__doc__.split("\n\n")[0]
                                     if __doc__ else None)
    parser.add_argument("action", choices=(GROUPS, LOAD, UNLOAD, EXPERIMENTS, RESTORE))
    parser.add_argument("model", nargs="?", help="the model to load, unload or restore")
    parser.add_argument("variant", nargs="?", help="restore: the variant to put back")
    parser.add_argument("--group", help="the group to load it on or unload it from")
    add_connection_options(parser)
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="deadline in seconds (a load waits for every replica) "
                             "[default: %(default)s]")
    parser.add_argument("--json", action="store_true", help="the answer as JSON")
    return parser


def print_groups(reply: operations_pb2.ListGroupsResponse) -> None:
    for group in reply.groups:
        state = "up" if group.up else "DOWN"
        print(f"{group.name} ({state}, {group.calls} calls): serves "
              f"{', '.join(group.models) or 'nothing'}")
        for replica in group.replicas:
            if not replica.reachable:
                print(f"  {replica.address}: unreachable ({replica.error})")
                continue
            models = ", ".join(f"{m.name}{'/' + m.version if m.version else ''} "
                               f"{m.state or 'not loaded'}" for m in replica.models)
            print(f"  {replica.address}: {models or 'no models'}")


def print_experiments(reply: operations_pb2.ListExperimentsResponse) -> None:
    if not reply.experiments:
        print("no experiments")
    for experiment in reply.experiments:
        shadow = (f", shadow: version {experiment.shadow_version} at "
                  f"{experiment.shadow_fraction:g}" if experiment.shadow_version else "")
        print(f"{experiment.model} (salt {experiment.salt}{shadow})")
        if experiment.shared_fault:
            print("  every variant breaks the guard's bounds at once: a shared fault (backend "
                  "outage, overload); none taken out")
        for v in experiment.variants:
            state = f"GUARDED: {v.guarded}" if v.guarded else "in the split"
            print(f"  {v.name}: version {v.version}, weight {v.weight:g}, {state}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.action in (LOAD, UNLOAD) and not (args.model and args.group):
        parser.error(f"{args.action} needs a MODEL and --group")
    if args.action == RESTORE and not (args.model and args.variant):
        parser.error("restore needs a MODEL and a VARIANT")
    try:
        with connection(args) as channel:
            stub = operations_pb2_grpc.OperationsStub(channel)
            if args.action == GROUPS:
                reply = stub.ListGroups(operations_pb2.ListGroupsRequest(), timeout=args.timeout)
                if args.json:
                    print(json.dumps(to_dict(reply)))
                else:
                    print_groups(reply)
                return 0
            if args.action == EXPERIMENTS:
                listed = stub.ListExperiments(operations_pb2.ListExperimentsRequest(),
                                              timeout=args.timeout)
                if args.json:
                    print(json.dumps(to_dict(listed)))
                else:
                    print_experiments(listed)
                return 0
            if args.action == RESTORE:
                restored = stub.RestoreVariant(operations_pb2.RestoreVariantRequest(
                    model=args.model, variant=args.variant), timeout=args.timeout)
                print(f"{args.model} {args.variant}: back in the split"
                      + (f" (it was out: {restored.was_guarded})" if restored.was_guarded
                         else " (it was not out)"))
                return 0
            request = operations_pb2.ModelControlRequest(model=args.model, group=args.group)
            method = stub.LoadModel if args.action == LOAD else stub.UnloadModel
            done = method(request, timeout=args.timeout)
            if args.json:
                print(json.dumps(to_dict(done)))
            else:
                print(f"{args.action}ed {args.model} on group {args.group} "
                      f"({', '.join(done.replicas)}); served by "
                      f"{', '.join(done.served_by) or 'no group'}")
            return 0
    except grpc.RpcError as err:
        code, message = _error(err)
        print(f"detect ops: {code}: {message}", file=sys.stderr)
    except (OSError, ValueError) as exc:
        print(f"detect ops: {exc}", file=sys.stderr)
    return 1
