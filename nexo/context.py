"""``app.ctx``: what a worker holds for its lifetime, typed.

``create_app`` builds it with the settings and the response headers; each
feature's ``setup`` adds what needs no server (``auth``: ``tokens``; ``web``:
``assets``), and the start-up listeners fill in the rest, in the order
``create_app`` registers them:

1. ``open_database`` (app.py): ``wal_backfiller``;
2. ``health``: ``health``; ``ratelimit``: ``limiter``; ``auth``: ``auth``, ``auth_pruner``;
3. ``transparency``: ``log_public_key``, ``sequencer``, ``witness_submitter``;
4. ``messages``: ``message_writer``, ``recipients``, ``message_sender``;
5. ``realtime``: ``hub``, ``broker``, ``session_watch``, ``ws_pending``, ``replay_budget``;
6. ``web``: ``console``;
7. ``_link_features`` (app.py) links them (it adds no field).

A field filled at start-up is absent (``AttributeError``) before its listener
has run. Handlers read it through :func:`app_context`, so mypy checks them.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

from sanic import Request, Sanic
from sanic.config import Config

if TYPE_CHECKING:
    from nexo.auth.service import AuthService
    from nexo.auth.tokens import TokenService
    from nexo.messages.service import MessageSender, RecipientCache
    from nexo.messages.writer import MessageWriter
    from nexo.platform.config import Settings
    from nexo.platform.health import HealthMonitor
    from nexo.platform.ratelimit import Limiter
    from nexo.platform.wal import WalBackfiller
    from nexo.realtime.broker import LocalBroker
    from nexo.realtime.hub import Hub
    from nexo.realtime.replay import ReplayBudget
    from nexo.realtime.sessions import SessionWatch
    from nexo.transparency.sequencer import Sequencer
    from nexo.transparency.witness import WitnessSubmitter
    from nexo.web.assets import Asset
    from nexo.web.sampler import Sampler


@dataclass(eq=False)
class AppContext:
    """Not slotted: Sanic extensions keep their own attributes on ``app.ctx`` too."""

    settings: Settings
    #: Added to every response but the OpenAPI UI's (``app._finish_response``).
    response_headers: dict[str, str]

    tokens: TokenService = field(init=False)
    assets: dict[str, Asset] = field(init=False)
    wal_backfiller: WalBackfiller | None = field(init=False)
    health: HealthMonitor = field(init=False)
    limiter: Limiter = field(init=False)
    auth: AuthService = field(init=False)
    auth_pruner: asyncio.Task[None] | None = field(init=False)
    log_public_key: bytes = field(init=False)
    sequencer: Sequencer = field(init=False)
    witness_submitter: WitnessSubmitter | None = field(init=False)
    message_writer: MessageWriter = field(init=False)
    recipients: RecipientCache = field(init=False)
    #: The one way a message is sent (HTTP and WebSocket).
    message_sender: MessageSender = field(init=False)
    hub: Hub = field(init=False)
    broker: LocalBroker = field(init=False)
    session_watch: SessionWatch = field(init=False)
    #: Upgrades per client address still waiting for their auth frame.
    ws_pending: Counter[str] = field(init=False)
    #: What ``sync`` may still replay, per user (``NEXO_WS_SYNC_RATE``).
    replay_budget: ReplayBudget = field(init=False)
    #: The console's sampler, when ``NEXO_CONSOLE_TOKEN`` is set.
    console: Sampler | None = field(init=False)


NexoApp = Sanic[Config, "AppContext"]


def app_context(source: Request | Sanic) -> AppContext:  # type: ignore[type-arg]
    """The typed ``app.ctx`` of a request's app, or of an app."""
    app = source.app if isinstance(source, Request) else source
    return cast(AppContext, app.ctx)
