"""Where the proxy's CPU goes under load: py-spy samples it while h2load drives Detect.

Writes the raw folded stacks (for flame graph tools) and a summary of the functions with the
most samples, on their own and with their callees. py-spy attaches with ptrace: run as root
or with CAP_SYS_PTRACE.

    make profile                              # null_detector, aggregation off
    .venv/bin/python -m detect_loadtest.cpuprofile --proxy-flag=--batch-max-wait-us=2000
"""

from __future__ import annotations

import argparse
import collections
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from detect_loadtest import bench, h2load
from detect_stack.servers import localtriton

ROOT = Path(__file__).resolve().parent.parent


def summarize(folded: Path, top: int = 25) -> str:
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in folded.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames, n = stack.split(";"), int(count)
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n

    def rows(counts: collections.Counter[str]) -> str:
        return "\n".join(f"{n / total:6.1%}  {name}" for name, n in counts.most_common(top))

    return (f"{total} samples\n\nown time (the function itself)\n{rows(own)}\n\n"
            f"with callees\n{rows(inclusive)}\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--model", default="null_detector")
    parser.add_argument("--image", type=Path, default=ROOT / "build" / "testdata" / "coffee.png")
    parser.add_argument("--proxy-flag", action="append", default=[],
                        help="extra proxy flag, e.g. --proxy-flag=--batch-max-wait-us=2000")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "profile")
    args = parser.parse_args()
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    args.out.mkdir(parents=True, exist_ok=True)
    folded = args.out / "proxy.folded"
    with tempfile.TemporaryDirectory() as tmp_name, localtriton(Path(tmp_name)) as (triton, _):
        tmp = Path(tmp_name)
        with bench.proxy_front(tmp, triton, tuple(args.proxy_flag)) as front:
            body = tmp / "body.bin"
            image = args.image.read_bytes()
            body.write_bytes(bench.request_body(front, [triton], args.model, image))
            url = front.url + front.path
            h2load.run(url, body, h2load.Load(300), tmp / "warmup.log", 120)
            spy = subprocess.Popen([py_spy, "record", "--pid", str(front.pids["front"][0]),
                                    "--format", "raw", "--output", str(folded), "--rate", "200",
                                    "--nonblocking"], stdout=subprocess.DEVNULL)
            time.sleep(1)  # attached
            result = h2load.run(url, body, h2load.Load(args.requests), tmp / "load.log", 300)
            spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            spy.wait(30)
    summary = summarize(folded)
    (args.out / "summary.txt").write_text(summary)
    print(f"{result['rps']} RPS under py-spy; folded stacks in {folded}\n\n{summary}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
