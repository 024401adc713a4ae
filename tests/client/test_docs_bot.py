"""docs/client.md's 20-line bot, run as written against a real server."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from contracts.server import LocalServer
from tests.client.conftest import PASSWORD, ClientFactory, Inbox, new_name

pytestmark = pytest.mark.server

DOC = Path(__file__).resolve().parents[2] / "docs" / "client.md"


def bot_source(server: str, state: Path) -> str:
    section = DOC.read_text().split("## A bot in 20 lines", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    lines = [line for line in code.group(1).splitlines() if line.strip() and not line.strip().startswith("#")]
    assert len(lines) <= 20, f"the bot is {len(lines)} lines"
    return code.group(1).replace("http://127.0.0.1:5000", server).replace("~/.nexo-echo", str(state))


async def test_the_documented_bot_echoes(
    nexo: LocalServer, make_client: ClientFactory, tmp_path: Path
) -> None:
    state = tmp_path / "bot"
    await (await make_client(nexo.base_url, "echo_bot", state=state)).close()
    alice_name = new_name("alice")
    alice = await make_client(nexo.base_url, alice_name)
    inbox = Inbox()
    alice.on_message(inbox)
    alice.start()
    bot = subprocess.Popen(  # noqa: ASYNC220 - a long-running child, stopped below
        [sys.executable, "-c", bot_source(nexo.base_url, state)],
        env={**os.environ, "NEXO_PASSWORD": PASSWORD, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        await alice.send("echo_bot", "ping")
        assert await inbox.wait(1, timeout=60) == ["echo: ping"]
        assert inbox.messages[0].sender == "echo_bot"
    finally:
        bot.terminate()
        output = bot.communicate(timeout=20)[0]
    assert f"{alice_name}: ping" in output
