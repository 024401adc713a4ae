"""The server's garbage-collector settings, a measured choice (docs/BENCHMARKS.md).

CPython starts a young-generation collection whenever the container objects
allocated minus those freed pass 700. The relay keeps a few small objects per
message alive until its group commit ends (the parsed frame, the queued message,
its ack callback), so under load that count passed 700 many times per batch: in
the 100 x 32 messaging benchmark (docs/BENCHMARKS.md) about a hundred young collections a second, whose
survivors made a full collection (100,000 objects, about 120 ms with the event
loop stopped) every second or two; about 12 % of the CPU went to the collector.

So once a worker has started, :func:`tune` collects, moves everything built so
far (modules, the app, routes, caches: long-lived by construction) out of the
collector's sight with :func:`gc.freeze`, and raises the young threshold to
:data:`THRESHOLDS` ``[0]``. Reference counting frees almost everything as
before; only cyclic garbage waits longer, and at most that many objects.
"""

from __future__ import annotations

import gc

#: Young, middle and old generation thresholds (CPython's defaults: 700, 10, 10).
THRESHOLDS = (50_000, 20, 20)


def tune() -> None:
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
