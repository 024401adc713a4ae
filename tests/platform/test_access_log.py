"""The access log: one JSON object per line, one write per event-loop turn."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re

from nexo.platform.logs import AccessLog

LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO nexo\.access \[(\d+)\] (\{.*\})$")


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def test_lines_of_one_loop_turn_are_written_once_at_its_end() -> None:
    stream = CountingStream()
    log = AccessLog(stream)

    async def main() -> None:
        for n in range(3):
            log.write({"request_id": f"r{n}", "status": 200})
        assert stream.getvalue() == ""  # nothing yet: the turn has not ended
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    asyncio.run(main())
    lines = stream.getvalue().splitlines()
    assert stream.writes == 1
    assert [json.loads(LINE.match(line).group(2))["request_id"] for line in lines] == ["r0", "r1", "r2"]  # type: ignore[union-attr]
    assert all(LINE.match(line).group(1) == str(os.getpid()) for line in lines)  # type: ignore[union-attr]


def test_outside_a_loop_a_line_is_written_at_once() -> None:
    stream = CountingStream()
    AccessLog(stream).write({"path": "/x", "note": 'ünïcode "quoted"'})
    match = LINE.match(stream.getvalue().rstrip("\n"))
    assert match is not None
    assert json.loads(match.group(2)) == {"path": "/x", "note": 'ünïcode "quoted"'}


def test_a_closed_stream_does_not_raise() -> None:
    stream = io.StringIO()
    stream.close()
    AccessLog(stream).write({"status": 500})  # dropped, not raised into the request
