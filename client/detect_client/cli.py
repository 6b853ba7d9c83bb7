"""``detect``: find objects in images from the command line, through the service's front door.

    detect photo.jpg                      # boxes as text
    detect --json build/testdata/*.png    # one JSON object per image (JSON Lines)
    cat photo.jpg | detect -              # the image from stdin
    detect --draw out/ photos/*.jpg       # each image with its boxes drawn, into out/
    detect models                         # the models the service offers
    detect batch photos/                  # a folder's files, up to 16 per DetectBatch call
    detect stream frames/                 # a video's frames in name order, as DetectStream
    detect ops groups                     # operators: Triton groups and their models

Defaults match ``make run``: Envoy's TLS front door at localhost:8443, verified with the
development CA build/certs/ca.crt. Every failure is one line on stderr (the file, the gRPC
status and the server's message), never a traceback; the exit status is 1 if any image failed.
``batch`` and ``stream`` print the same lines, in the order of the files.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import glob
import json
import os
import sys
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from detect.v1 import detect_pb2, detect_pb2_grpc
from detect_client.batch import detect_batch
from detect_client.channel import DEFAULT_TARGET, connect
from detect_client.declare import MAX_BATCH_IMAGES
from detect_client.results import error_of
from detect_client.stream import DEFAULT_SEGMENT, detect_stream

MAKE_RUN_CA = Path("build/certs/ca.crt")
STDIN = "-"
# Subcommands; anything else in the first place is an image.
MODELS, BATCH, STREAM, OPS = "models", "batch", "stream", "ops"
# Envoy's front buffers a DetectBatch whole and refuses one over 64 MiB by default
# (--max-batch-request-bytes), which 16 images within the proxy's 8 MiB limit can pass: a
# batch of the command stops short of it, with room for the request's framing.
BATCH_MAX_BYTES = 60 * 1024 * 1024
# A stream of DEFAULT_SEGMENT frames is one call: a deadline for one image would not fit it.
STREAM_TIMEOUT_S = 60.0


class Failure(Exception):
    """One line for stderr."""


@dataclass
class Outcome:
    source: str
    image: bytes
    response: detect_pb2.DetectResponse | None = None
    error: tuple[str, str] | None = None  # (status name, message)


def to_dict(message: Message) -> dict[str, Any]:
    """The proto's own field names, every field present (zeros included, e.g. class_id 0),
    as grpcurl and every language's JSON mapping spell them."""
    try:
        return json_format.MessageToDict(message, preserving_proto_field_name=True,
                                         always_print_fields_with_no_presence=True)
    except TypeError:  # protobuf < 5.26 names the option differently
        return json_format.MessageToDict(  # type: ignore[call-arg]
            message, preserving_proto_field_name=True, including_default_value_fields=True)


def expand(patterns: Sequence[str]) -> list[str]:
    """Paths from arguments: globs expanded here too (quoted, or on Windows), ``-`` kept."""
    paths: list[str] = []
    for pattern in patterns:
        if pattern == STDIN or not glob.has_magic(pattern):
            paths.append(pattern)
            continue
        matches = sorted(glob.glob(pattern))
        if not matches:
            raise Failure(f"{pattern}: no file matches")
        paths += matches
    return paths


def read(source: str) -> bytes:
    if source == STDIN:
        return sys.stdin.buffer.read()
    try:
        return Path(source).read_bytes()
    except FileNotFoundError:
        raise Failure(f"{source}: no such file") from None
    except IsADirectoryError:
        raise Failure(f"{source}: is a directory") from None
    except OSError as exc:
        raise Failure(f"{source}: cannot read it ({exc.strerror})") from None


def _error(err: grpc.RpcError) -> tuple[str, str]:
    code = err.code() if isinstance(err, grpc.Call) else None
    details = err.details() if isinstance(err, grpc.Call) else str(err)
    return (code.name if code else "UNKNOWN"), (details or "no details")


def detect_one(stub: detect_pb2_grpc.DetectorStub, source: str, args: argparse.Namespace
               ) -> Outcome:
    outcome = Outcome(source, b"")
    try:
        outcome.image = read(source)
        request = detect_pb2.DetectRequest(image=outcome.image, model=args.model,
                                           model_version=args.model_version,
                                           min_score=args.min_score,
                                           max_detections=args.max_detections)
        outcome.response = stub.Detect(request, timeout=args.timeout,
                                       metadata=[("x-request-id", str(uuid.uuid4()))])
    except Failure as exc:
        outcome.error = ("FILE", str(exc).split(": ", 1)[-1])
    except grpc.RpcError as err:
        outcome.error = _error(err)
    return outcome


def print_text(outcome: Outcome, out: TextIO) -> None:
    r = outcome.response
    assert r is not None
    variant = f" ({r.variant})" if r.variant else ""
    out.write(f"{outcome.source}: {r.image_width}x{r.image_height}, model {r.model} "
              f"v{r.model_version}{variant}, {len(r.detections)} detection(s)\n")
    for d in r.detections:
        b = d.box
        out.write(f"  {d.label or d.class_id} {d.score:.3f} "
                  f"[{b.x_min:.1f}, {b.y_min:.1f}, {b.x_max:.1f}, {b.y_max:.1f}]\n")


class Progress:
    """A one-line bar on stderr while many images are in flight (only on a terminal)."""

    def __init__(self, total: int, stream: TextIO = sys.stderr) -> None:
        self.total, self.done, self.stream = total, 0, stream
        self.shown = total > 1 and stream.isatty()

    def step(self) -> None:
        self.done += 1
        if self.shown:
            width = 30
            filled = width * self.done // self.total
            self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] "
                              f"{self.done}/{self.total}")
            if self.done == self.total:
                self.stream.write("\r" + " " * (width + 20) + "\r")
            self.stream.flush()


def run_detect(args: argparse.Namespace, channel: grpc.Channel) -> int:
    sources = expand(args.images)
    if sources.count(STDIN) > 1:
        raise Failure("-: stdin can be read only once")
    if args.draw:
        from detect_client.draw import require_pillow

        require_pillow()
    stub = detect_pb2_grpc.DetectorStub(channel)
    progress = Progress(len(sources))
    failed = 0
    with concurrent.futures.ThreadPoolExecutor(max(1, args.concurrency)) as pool:
        for outcome in pool.map(lambda s: detect_one(stub, s, args), sources):
            progress.step()
            failed += report(outcome, args)
    return 1 if failed else 0


def report(outcome: Outcome, args: argparse.Namespace) -> int:
    """Print one image's result (and draw it); 1 if it failed."""
    if outcome.error:
        code, message = outcome.error
        if args.json:
            print(json.dumps({"image": outcome.source,
                              "error": {"code": code, "message": message}}), flush=True)
        where = outcome.source if code == "FILE" else f"{outcome.source}: {code}"
        print(f"detect: {where}: {message}", file=sys.stderr, flush=True)
        return 1
    assert outcome.response is not None
    if args.json:
        print(json.dumps({"image": outcome.source, **to_dict(outcome.response)}), flush=True)
    else:
        print_text(outcome, sys.stdout)
    if args.draw:
        from detect_client.draw import draw

        try:
            written = draw(outcome.image, outcome.response, Path(args.draw), outcome.source)
        except OSError as exc:
            print(f"detect: {outcome.source}: cannot draw it ({exc})", file=sys.stderr)
            return 1
        if not args.json:
            print(f"  drawn: {written}")
    return 0


def listing(patterns: Sequence[str]) -> list[str]:
    """Files for ``batch`` and ``stream``: a folder gives its files in name order (a video's
    numbered frames in sequence; hidden files and subfolders left out), anything else is
    taken as ``detect`` takes it."""
    sources: list[str] = []
    for path in expand(patterns):
        if path == STDIN or not os.path.isdir(path):
            sources.append(path)
            continue
        names = sorted(entry.name for entry in os.scandir(path)
                       if entry.is_file() and not entry.name.startswith("."))
        if not names:
            raise Failure(f"{path}: no files in it")
        sources += [os.path.join(path, name) for name in names]
    return sources


def settle(outcome: Outcome, result: detect_pb2.DetectResult) -> None:
    """Put one image's DetectResult into its outcome."""
    error = error_of(result)
    if error:
        outcome.error = (error[0].name, error[1] or "no details")
    else:
        outcome.response = result.response


def batches(sources: Sequence[str], size: int) -> Iterator[list[Outcome]]:
    """The files read and grouped into DetectBatch calls: at most ``size`` images and
    BATCH_MAX_BYTES each (a file that cannot be read is grouped with them, to be reported in
    its place)."""
    batch: list[Outcome] = []
    images = total = 0
    for source in sources:
        outcome = Outcome(source, b"")
        try:
            outcome.image = read(source)
        except Failure as exc:
            outcome.error = ("FILE", str(exc).split(": ", 1)[-1])
        if images and outcome.error is None and (
                images == size or total + len(outcome.image) > BATCH_MAX_BYTES):
            yield batch
            batch, images, total = [], 0, 0
        batch.append(outcome)
        if outcome.error is None:
            images, total = images + 1, total + len(outcome.image)
    if batch:
        yield batch


def detect_chunk(stub: detect_pb2_grpc.DetectorStub, outcomes: list[Outcome],
                 args: argparse.Namespace) -> list[Outcome]:
    """One DetectBatch call for the files that could be read; every file gets an outcome."""
    sent = [outcome for outcome in outcomes if outcome.error is None]
    if not sent:
        return outcomes
    try:
        reply = detect_batch(stub, [o.image for o in sent], model=args.model,
                             model_version=args.model_version,
                             min_score=args.min_score, max_detections=args.max_detections,
                             timeout=args.timeout,
                             metadata=[("x-request-id", str(uuid.uuid4()))])
    except grpc.RpcError as err:  # the call as a whole: every image of it failed so
        for outcome in sent:
            outcome.error = _error(err)
        return outcomes
    if len(reply.results) != len(sent):
        raise Failure(f"the service answered {len(reply.results)} results "
                      f"for {len(sent)} images")
    for outcome, result in zip(sent, reply.results, strict=True):
        settle(outcome, result)
    return outcomes


def _many(args: argparse.Namespace, channel: grpc.Channel, size_flag: str, size: int,
          count: int) -> tuple[detect_pb2_grpc.DetectorStub, Progress]:
    """What `detect batch` and `detect stream` check before sending anything: their size
    option, and Pillow when drawing (so a missing one fails before any call)."""
    if size < 1:
        raise Failure(f"{size_flag} must be at least 1, not {size}")
    if args.draw:
        from detect_client.draw import require_pillow

        require_pillow()
    return detect_pb2_grpc.DetectorStub(channel), Progress(count)


def run_batch(args: argparse.Namespace, channel: grpc.Channel) -> int:
    """The files in DetectBatch calls of ``--batch-size``, one call at a time (the service
    already sends each call's images to the model together)."""
    sources = listing(args.images)
    if sources.count(STDIN) > 1:
        raise Failure("-: stdin can be read only once")
    stub, progress = _many(args, channel, "--batch-size", args.batch_size, len(sources))
    failed = 0
    for batch in batches(sources, args.batch_size):
        for outcome in detect_chunk(stub, batch, args):
            progress.step()
            failed += report(outcome, args)
    return 1 if failed else 0


def run_stream(args: argparse.Namespace, channel: grpc.Channel) -> int:
    """The files as frames of DetectStream calls of ``--segment`` frames each, every frame's
    id its path. A file that cannot be read is reported when its segment is read, and not
    sent."""
    sources = listing(args.images)
    if STDIN in sources:
        raise Failure("-: `detect stream` sends files; `detect -` reads an image from stdin")
    stub, progress = _many(args, channel, "--segment", args.segment, len(sources))
    failed = 0

    def frames() -> Iterator[tuple[str, bytes]]:
        nonlocal failed
        for source in sources:
            try:
                yield source, read(source)
            except Failure as exc:
                progress.step()
                unread = Outcome(source, b"", error=("FILE", str(exc).split(": ", 1)[-1]))
                failed += report(unread, args)

    for frame_id, result in detect_stream(stub, frames(), segment=args.segment,
                                          unordered=args.unordered, model=args.model,
                                          model_version=args.model_version,
                                          min_score=args.min_score,
                                          max_detections=args.max_detections,
                                          timeout=args.timeout):
        progress.step()
        outcome = Outcome(frame_id, b"")
        settle(outcome, result)
        if args.draw and outcome.response is not None:
            outcome.image = read(frame_id)  # read again: the stream keeps no frame it sent
        failed += report(outcome, args)
    return 1 if failed else 0


def run_models(args: argparse.Namespace, channel: grpc.Channel) -> int:
    stub = detect_pb2_grpc.DetectorStub(channel)
    reply = stub.ListModels(detect_pb2.ListModelsRequest(), timeout=args.timeout)
    if args.json:
        print(json.dumps(to_dict(reply)))
        return 0
    for m in reply.models:
        default = " (default)" if m.name == reply.default_model else ""
        print(f"{m.name}{default}: versions {', '.join(m.versions) or '-'}; "
              f"labels {', '.join(m.labels) or '-'}; images up to {m.limits.max_bytes} bytes, "
              f"{m.limits.max_width}x{m.limits.max_height} pixels")
    return 0


DESCRIPTIONS = {
    BATCH: "Find objects in many images with DetectBatch calls, through the service's front "
           "door.",
    STREAM: "Find objects in a sequence of images (e.g. a video's frames) with DetectStream, "
            "through the service's front door.",
}


def add_connection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", default=os.environ.get("DETECT_TARGET", DEFAULT_TARGET),
                        help="the service's address [default: %(default)s]")
    parser.add_argument("--ca-file", default=os.environ.get("DETECT_CA_FILE"),
                        help=f"CA that signed the server's certificate [default: {MAKE_RUN_CA} "
                             "when it exists, else the system's roots]")
    parser.add_argument("--cert-file", default=os.environ.get("DETECT_CERT_FILE"),
                        help="client certificate for mTLS")
    parser.add_argument("--key-file", default=os.environ.get("DETECT_KEY_FILE"),
                        help="client private key for mTLS")
    parser.add_argument("--plaintext", action="store_true",
                        help="no TLS (a proxy directly, for debugging)")


def connection(args: argparse.Namespace) -> grpc.Channel:
    """The channel the options describe (``make run``'s CA by default when it exists)."""
    if args.ca_file is None and not args.plaintext and MAKE_RUN_CA.exists():
        args.ca_file = str(MAKE_RUN_CA)
    return connect(args.target, ca_file=args.ca_file, cert_file=args.cert_file,
                   key_file=args.key_file, plaintext=args.plaintext, timeout_s=args.timeout)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The options of ``detect`` (and ``detect models``), or of ``detect batch`` or
    ``detect stream``: the same connection and model options, and their own."""
    many = command in (BATCH, STREAM)
    parser = argparse.ArgumentParser(
        prog=f"detect {command}" if many else "detect",
        description=DESCRIPTIONS.get(command or "",
                                     __doc__.split("\n\n")[0] if __doc__ else None),
        epilog="`detect models` lists the models; `detect batch` and `detect stream` send "
               "folders of images as batches or as a stream; `detect ops` is for operators "
               "(Triton groups, model load/unload). Environment: DETECT_TARGET, "
               "DETECT_CA_FILE, DETECT_CERT_FILE, DETECT_KEY_FILE.")
    if many:
        parser.add_argument("images", nargs="*", metavar="PATH",
                            help="folders (their files in name order), JPEG, PNG, WebP or BMP "
                                 "files, or globs")
    else:
        parser.add_argument("images", nargs="*", metavar="IMAGE",
                            help="JPEG, PNG, WebP or BMP files or globs; - reads one from stdin")
    add_connection_options(parser)
    parser.add_argument("--model", default="", help="model name [default: the service's]")
    parser.add_argument("--model-version", default="",
                        help="pin a version of the model, e.g. 2 [default: the model's "
                             "experiment decides, else the latest]")
    parser.add_argument("--min-score", type=float, default=0.0,
                        help="leave out detections scoring lower [default: %(default)s]")
    parser.add_argument("--max-detections", type=int, default=0,
                        help="at most this many per image, best first (0: all)")
    if command == STREAM:
        parser.add_argument("--timeout", type=float, default=STREAM_TIMEOUT_S,
                            help="deadline of each segment's stream in seconds "
                                 "[default: %(default)s]")
    else:
        parser.add_argument("--timeout", type=float, default=10.0,
                            help="deadline of each call in seconds [default: %(default)s]")
    parser.add_argument("--json", action="store_true",
                        help="one JSON object per image (JSON Lines), the proto's field names")
    parser.add_argument("--draw", metavar="DIR",
                        help="write each image with its boxes and labels drawn into DIR")
    if command == BATCH:
        parser.add_argument("--batch-size", type=int, default=MAX_BATCH_IMAGES,
                            help="images per DetectBatch call, at most the service's limit "
                                 "[default: %(default)s]")
    elif command == STREAM:
        parser.add_argument("--segment", type=int, default=DEFAULT_SEGMENT,
                            help="frames per stream: a long sequence goes as several streams, "
                                 "each declaring its frames to the rate limits "
                                 "[default: %(default)s]")
        parser.add_argument("--unordered", action="store_true",
                            help="print each answer as it arrives instead of in file order")
    else:
        parser.add_argument("--concurrency", type=int, default=8,
                            help="images in flight at once [default: %(default)s]")
    return parser


RUNS = {MODELS: run_models, BATCH: run_batch, STREAM: run_stream}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == OPS:
        from detect_client import ops

        return ops.main(argv[1:])
    command = argv[0] if argv and argv[0] in RUNS else None
    parser = build_parser(command)
    args = parser.parse_args(argv[1:] if command else argv)
    if command in (BATCH, STREAM) and not args.images:
        parser.error("give at least one folder or image")
    if command is None and not args.images:
        parser.error("give at least one image (or `detect models`)")
    try:
        with connection(args) as channel:
            return RUNS.get(command or "", run_detect)(args, channel)
    except Failure as exc:
        print(f"detect: {exc}", file=sys.stderr)
    except grpc.RpcError as err:
        code, message = _error(err)
        print(f"detect: {code}: {message}", file=sys.stderr)
    except (OSError, ValueError) as exc:
        print(f"detect: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print("detect: interrupted", file=sys.stderr)
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
