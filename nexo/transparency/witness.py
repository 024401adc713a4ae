"""The witness client (C2SP tlog-witness, https://c2sp.org/tlog-witness).

Each worker runs a :class:`WitnessSubmitter`; a lease row in the database
(``witness_lease``) lets one worker of one instance submit at a time. Every
``NEXO_WITNESS_INTERVAL`` seconds the holder sends the *latest* STH's
checkpoint to each witness that has not cosigned it yet (coalescing: what was
signed meanwhile is never sent on its own), one request in flight per witness::

    POST <url>/add-checkpoint
    old <size the witness holds>
    <consistency proof from that size, one base64 hash a line>
    <blank line>
    <the checkpoint note>

A 409 (``text/x.tlog.size`` body) says which size the witness holds: the
request is made again from there, once. 403, 404, 422, other statuses,
timeouts and a cosignature that does not verify are logged, counted in
``nexo_witness_submissions_total{witness, outcome}`` and stored in
``witness_states`` (``nexo doctor`` shows them); registrations never wait for
any of it. A cosignature is stored with the STH it covers only once it
verifies (``cosignature/v1``, the witness's key ID of type 0x04, a timestamp).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from enum import StrEnum

import httpx
from prometheus_client import Counter

from nexo.platform.config import Witness
from nexo.platform.tasks import cancel_and_wait, repeat
from nexo.transparency import service, witness_repository
from nexo.transparency import sth as sth_mod
from nexo.transparency.cosignature import CosignatureError, verify_lines
from nexo.transparency.sth import SignedTreeHead

log = logging.getLogger("nexo.witness")

#: Seconds one add-checkpoint request may take.
REQUEST_TIMEOUT = 10.0
SIZE_CONTENT_TYPE = "text/x.tlog.size"


class Outcome(StrEnum):
    COSIGNED = "cosigned"
    CONFLICT = "conflict"  # 409: resent from the witness's size
    FORBIDDEN = "forbidden"  # 403: the witness does not trust our signature
    UNKNOWN_LOG = "unknown_log"  # 404: the witness does not know our origin
    INCONSISTENT = "inconsistent"  # 422: the witness saw a different tree
    BAD_COSIGNATURE = "bad_cosignature"
    AHEAD = "witness_ahead"  # the witness holds a larger tree than our latest STH
    TIMEOUT = "timeout"
    ERROR = "error"


SUBMISSIONS = Counter(
    "nexo_witness_submissions_total",
    "add-checkpoint requests to witnesses, by outcome",
    ["witness", "outcome"],
)

_STATUS_OUTCOMES = {403: Outcome.FORBIDDEN, 404: Outcome.UNKNOWN_LOG, 422: Outcome.INCONSISTENT}


def request_body(old_size: int, proof: list[str], note: str) -> bytes:
    """The add-checkpoint body: ``old N``, the proof lines, a blank line, the note."""
    return (f"old {old_size}\n" + "".join(f"{line}\n" for line in proof) + "\n" + note).encode()


class WitnessSubmitter:
    def __init__(self, witnesses: tuple[Witness, ...], interval: float, log_public_key: bytes) -> None:
        self.witnesses = witnesses
        self.interval = interval
        self.log_public_key = log_public_key
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"[:128]
        self._task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None

    def start(self) -> None:
        self._client = httpx.AsyncClient(timeout=REQUEST_TIMEOUT, follow_redirects=False)
        self._task = repeat(self.interval, self._round_safely, name="nexo-witness")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        if self._client is not None:
            await self._client.aclose()
        try:
            await witness_repository.release_lease(self.holder)
        except Exception:  # the database may be going away too; the lease expires anyway
            log.debug("witness: could not release the lease", exc_info=True)

    async def _round_safely(self) -> None:
        try:
            await self.round()
        except Exception:  # the next round tries again; registrations never depend on it
            log.exception("witness: a submission round failed")

    async def round(self) -> None:
        """One submission of the latest STH to every witness behind it, if this worker holds the lease."""
        now_ms = int(time.time() * 1000)
        lease_ms = int((self.interval + 3 * REQUEST_TIMEOUT) * 1000)
        if not await witness_repository.take_lease(self.holder, now_ms, now_ms + lease_ms):
            return
        latest = await service.latest()
        states = await witness_repository.states()
        behind = [
            w for w in self.witnesses if int(states.get(w.name, {}).get("cosigned_index", -1)) < latest.index
        ]
        sizes = {w.name: int(states.get(w.name, {}).get("size", 0)) for w in behind}
        await asyncio.gather(*(self._submit(w, latest, sizes[w.name]) for w in behind))

    async def _submit(self, witness: Witness, latest: SignedTreeHead, size: int) -> None:
        assert self._client is not None
        note = sth_mod.signed_note(latest, self.log_public_key)
        for _ in range(2):  # the second time from the size a 409 named
            if size > latest.tree_size:
                await self._fail(
                    witness,
                    Outcome.AHEAD,
                    f"the witness holds a tree of {size} leaves, our latest STH {latest.tree_size}: "
                    "was the log rolled back?",
                )
                return
            proof: list[str] = []
            if 0 < size < latest.tree_size:
                proof = (await service.consistency(size, latest.tree_size))["consistency_path"]
            try:
                response = await self._client.post(
                    f"{witness.url}/add-checkpoint", content=request_body(size, proof, note)
                )
            except httpx.TimeoutException:
                await self._fail(witness, Outcome.TIMEOUT, f"no answer within {REQUEST_TIMEOUT:g} s")
                return
            except httpx.HTTPError as exc:
                await self._fail(witness, Outcome.ERROR, f"{type(exc).__name__}: {exc}")
                return
            if response.status_code == 200:
                await self._cosigned(witness, latest, response.text)
                return
            content_type = response.headers.get("content-type", "")
            if response.status_code == 409 and content_type.startswith(SIZE_CONTENT_TYPE):
                SUBMISSIONS.labels(witness.name, Outcome.CONFLICT).inc()
                text = response.text.strip()
                if not text.isdecimal():
                    await self._fail(witness, Outcome.ERROR, f"409 with a malformed size {text[:40]!r}")
                    return
                size = int(text)
                log.info("witness %s holds size %d: resending from there", witness.name, size)
                await witness_repository.record_size(witness.name, size, int(time.time() * 1000))
                continue
            outcome = _STATUS_OUTCOMES.get(response.status_code, Outcome.ERROR)
            await self._fail(witness, outcome, f"HTTP {response.status_code}: {response.text[:200].strip()}")
            return
        await self._fail(witness, Outcome.CONFLICT, "409 twice in a row")

    async def _cosigned(self, witness: Witness, latest: SignedTreeHead, text: str) -> None:
        try:
            cosigs = verify_lines(text, latest.head.signed_bytes(), witness.key)
        except CosignatureError as exc:
            await self._fail(witness, Outcome.BAD_COSIGNATURE, str(exc))
            return
        if not cosigs:
            await self._fail(witness, Outcome.BAD_COSIGNATURE, "the answer holds no cosignature by its key")
            return
        now_ms = int(time.time() * 1000)
        await witness_repository.record_success(
            witness.name, latest.tree_size, latest.index, cosigs[:1], now_ms
        )
        SUBMISSIONS.labels(witness.name, Outcome.COSIGNED).inc()
        log.info("witness %s cosigned STH %d (%d leaves)", witness.name, latest.index, latest.tree_size)

    async def _fail(self, witness: Witness, outcome: Outcome, detail: str) -> None:
        SUBMISSIONS.labels(witness.name, outcome).inc()
        log.warning("witness %s: %s: %s", witness.name, outcome, detail)
        await witness_repository.record_failure(witness.name, f"{outcome}: {detail}", int(time.time() * 1000))
