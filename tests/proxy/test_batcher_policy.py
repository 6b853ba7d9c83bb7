"""When the micro-batcher waits: only while the model already has a batch in flight."""

from __future__ import annotations

import asyncio

from detect_proxy.batcher import MicroBatcher
from detect_proxy.infer_request import RequestTemplate
from detect_proxy.models import DetectorModel

MODEL = DetectorModel("det", "IMAGE", True, 8, (), RequestTemplate("det", "IMAGE", True, ()))


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_a_lone_call_goes_at_once_and_later_calls_ride_together():
    async def scenario() -> list[list[bytes]]:
        sent: list[list[bytes]] = []
        release = asyncio.Event()

        class Upstream:
            async def infer(self, model, images, timeout_s, request_ids):
                sent.append(images)
                await release.wait()
                return "result"

        batcher = MicroBatcher(Upstream(), max_wait_s=60.0, max_size=0)
        deadline = asyncio.get_running_loop().time() + 120
        first = asyncio.create_task(batcher.submit(MODEL, b"a", deadline, ""))
        await _settle()
        assert sent == [[b"a"]], "an idle model's call must not wait for company"
        later = [asyncio.create_task(batcher.submit(MODEL, i, deadline, "")) for i in (b"b", b"c")]
        await _settle()
        assert sent == [[b"a"]], "calls arriving while a batch is in flight wait for it"
        release.set()
        answers = await asyncio.wait_for(asyncio.gather(first, *later), timeout=5)
        assert answers == [("result", 0), ("result", 0), ("result", 1)]
        return sent

    # The waiting calls went as one batch when the first one was answered, not after 60 s.
    assert asyncio.run(scenario()) == [[b"a"], [b"b", b"c"]]
