"""Start the genuine NVIDIA Triton Inference Server on this machine's CPU.

``make triton`` installs the PyPI wheel ``nvidia-pytriton`` into its own venv
(``.venv-triton``: numpy < 2, Pillow, onnxruntime). The wheel bundles ``tritonserver``
2.51 with its libraries, the Python backend and Python-backend stubs, but no other backend.
This launcher supplies what running it directly needs, then becomes ``tritonserver``
(``exec``: signals reach the server itself, and it stops cleanly on SIGTERM):

- a backend directory holding ``python/`` (the backend library, its utilities and the stub
  for the venv's Python);
- ``LD_LIBRARY_PATH``: the wheel's bundled libraries and the venv's ``libpython``;
- ``PATH`` starting with the venv: the stub takes numpy from the first ``python3``, and
  with numpy 2 Triton 2.51's Python backend returns empty outputs;
- the model repository derived by ``detect_localtriton.cpu_repository`` when the given one has
  onnxruntime models (served here through the Python backend);
- loopback addresses, no HTTP endpoint, no GPU metrics, no pinned memory pool.

Every other argument goes to ``tritonserver`` unchanged, so flags are tritonserver's own
(the same names localtriton takes: ``--grpc-port``, ``--metrics-port``, the keepalive
flags, ``--exit-timeout-secs``...). As in localtriton, metrics are off unless
``--metrics-port`` is given and not 0. ``--print-command`` shows the command line and
environment instead of running it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

from .cpu_repository import derive

VENV_ENV = "TRITONSERVER_CPU_VENV"
WORK_DIR_ENV = "TRITONSERVER_CPU_WORK_DIR"

# Added unless the command line sets them: this is a development server on loopback.
DEFAULTS = {
    "--grpc-address": "127.0.0.1",
    "--metrics-address": "127.0.0.1",
    "--allow-http": "false",
    "--allow-gpu-metrics": "false",
    "--pinned-memory-pool-byte-size": "0",
    # Our configs are complete: without this, every Python-backend model starts an extra,
    # short-lived stub process just to auto-complete its config (seconds per server start).
    "--strict-model-config": "true",
}


class SetupError(Exception):
    """The Triton venv is missing or incomplete; the message says how to fix it."""


def _option(args: list[str], flag: str) -> str | None:
    """The value of ``flag`` in tritonserver's ``--flag value`` or ``--flag=value`` forms."""
    value = None
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value


def _without(args: list[str], flag: str) -> list[str]:
    out: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg == flag:
            skip = True
        elif not arg.startswith(flag + "="):
            out.append(arg)
    return out


def site_packages(venv: Path) -> Path:
    found = sorted(venv.glob("lib/python3*/site-packages/pytriton/tritonserver"))
    if not found:
        raise SetupError(f"no tritonserver under {venv} (nvidia-pytriton); run `make triton`")
    return found[-1].parent.parent


def python_version(venv: Path) -> str:
    return site_packages(venv).parent.name.removeprefix("python")


def libpython_dir(venv: Path) -> Path:
    """Where the venv's interpreter keeps its shared libpython (the stub links to it)."""
    result = subprocess.run(
        [str(venv / "bin" / "python3"), "-c",
         "import sysconfig; print(sysconfig.get_config_var('LIBDIR'), "
         "sysconfig.get_config_var('INSTSONAME'))"],
        capture_output=True, text=True, check=False)
    libdir, _, soname = result.stdout.strip().partition(" ")
    if result.returncode or not (Path(libdir) / soname).exists():
        raise SetupError(f"no shared libpython for {venv}/bin/python3: the Python backend "
                         "stub needs a Python built with --enable-shared")
    return Path(libdir)


def backend_directory(venv: Path, work_dir: Path) -> Path:
    """``<work_dir>/backends/python``: the wheel's Python backend plus the matching stub."""
    triton = site_packages(venv) / "pytriton" / "tritonserver"
    stub = triton / "python_backend_stubs" / python_version(venv) / "triton_python_backend_stub"
    if not stub.exists():
        raise SetupError(f"the wheel has no Python backend stub for Python {python_version(venv)}")
    links = {stub.name: stub, **{p.name: p for p in (triton / "backends" / "python").iterdir()
                                  if p.is_file()}}
    python = work_dir / "backends" / "python"
    python.mkdir(parents=True, exist_ok=True)
    for name, path in links.items():
        link = python / name
        if not (link.is_symlink() and link.resolve() == path.resolve()):
            tmp = python / f".{name}.{os.getpid()}"
            tmp.symlink_to(path.resolve())
            os.replace(tmp, link)  # atomic: replicas starting together see a whole link
    return python.parent


def command(args: list[str], venv: Path, work_dir: Path) -> tuple[list[str], dict[str, str]]:
    """The tritonserver command line and environment for ``args`` (tritonserver flags)."""
    venv, work_dir = venv.resolve(), work_dir.resolve()
    packages = site_packages(venv)
    triton = packages / "pytriton" / "tritonserver"
    repository = _option(args, "--model-repository")
    if repository is None:
        raise SetupError("--model-repository is required")
    args = _without(args, "--model-repository")
    metrics_port = _option(args, "--metrics-port")
    if metrics_port in (None, "0"):
        args = _without(args, "--metrics-port") + ["--allow-metrics=false"]
    extra = [f"{flag}={value}" for flag, value in DEFAULTS.items()
             if _option(args, flag) is None
             and not (flag == "--metrics-address" and "--allow-metrics=false" in args)]
    argv = [str(triton / "bin" / "tritonserver"),
            f"--model-repository={derive(Path(repository), work_dir)}",
            f"--backend-directory={backend_directory(venv, work_dir)}",
            f"--cache-directory={triton / 'caches'}",
            *extra, *args]
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in (str(packages / "nvidia_pytriton.libs"), str(libpython_dir(venv)),
                    env.get("LD_LIBRARY_PATH", "")) if p)
    env["PATH"] = os.pathsep.join((str(venv / "bin"), env.get("PATH", "")))
    env.pop("PYTHONPATH", None)  # the stub must not see the project's packages
    return argv, env


def reap_orphaned_stubs(work_dir: Path) -> list[int]:
    """End the Python-backend stubs a killed server of this work directory left behind.

    A stub busy with a request when its tritonserver dies (SIGKILL, OOM) waits for the
    server for ever, holding its model's memory (about 1 GB for centerface). Each stub's
    command line names its server's pid; a stub whose parent is no longer that pid is an
    orphan. Only stubs started from this work directory are looked at, so servers of other
    checkouts, and live replicas sharing this one, are left alone. Their shared-memory
    regions go with them. Called where a server starts, e.g. when supervisord restarts one.
    """
    stub = str(work_dir.resolve() / "backends" / "python" / "triton_python_backend_stub")
    reaped = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile, or not ours to read
        # stub MODEL_PY SHM_REGION SHM_DEFAULT SHM_GROWTH SERVER_PID BACKEND_DIR ...
        if argv[0] != stub or len(argv) < 6 or not argv[5].isdigit() or int(argv[5]) == ppid:
            continue
        try:
            os.kill(int(entry.name), signal.SIGKILL)
        except OSError:
            continue
        reaped.append(int(entry.name))
        with contextlib.suppress(OSError):
            (Path("/dev/shm") / Path(argv[2]).name).unlink()
    return reaped


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m detect_localtriton.tritonserver", allow_abbrev=False,
        description="Run the genuine tritonserver from the nvidia-pytriton wheel on CPU. "
                    "Arguments not listed here are tritonserver's own and passed through.")
    parser.add_argument("--triton-venv", type=Path,
                        default=Path(os.environ.get(VENV_ENV, ".venv-triton")),
                        help=f"venv with nvidia-pytriton, numpy<2, Pillow, onnxruntime "
                             f"[env {VENV_ENV}; default: %(default)s]")
    parser.add_argument("--work-dir", type=Path,
                        default=Path(os.environ.get(WORK_DIR_ENV, "build/tritonserver")),
                        help=f"where the backend directory and derived repositories go "
                             f"[env {WORK_DIR_ENV}; default: %(default)s]")
    parser.add_argument("--print-command", action="store_true",
                        help="print the command line and its environment instead of running it")
    return parser


def main(argv: list[str] | None = None) -> int:
    own, passthrough = build_parser().parse_known_args(argv)
    try:
        args, env = command(passthrough, own.triton_venv, own.work_dir)
    except SetupError as exc:
        print(f"tritonserver: {exc}", file=sys.stderr)
        return 2
    if own.print_command:
        for name in ("LD_LIBRARY_PATH", "PATH"):
            print(f"{name}={shlex.quote(env[name])} \\")
        print(" ".join(shlex.quote(a) for a in args).replace(" --", " \\\n  --"))
        return 0
    reaped = reap_orphaned_stubs(own.work_dir)
    if reaped:
        print(f"tritonserver: ended {len(reaped)} Python-backend stub(s) a killed server left "
              f"behind: pids {', '.join(map(str, reaped))}", file=sys.stderr)
    sys.stdout.flush()
    os.execve(args[0], args, env)
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main())
