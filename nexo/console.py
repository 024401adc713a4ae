"""What every ``nexo`` subcommand shares: exit codes and the one-line failure message.

Exit codes: 0 success, 1 a check found a problem, 2 bad configuration or usage.
"""

from __future__ import annotations

import sys
from enum import IntEnum

from nexo.config import Settings


class Exit(IntEnum):
    OK = 0
    PROBLEM = 1
    CONFIG = 2


EXIT_OK, EXIT_PROBLEM, EXIT_CONFIG = Exit.OK, Exit.PROBLEM, Exit.CONFIG


def fail(message: str, code: int = EXIT_CONFIG) -> int:
    """Print ``nexo: <message>`` on stderr and return ``code``."""
    print(f"nexo: {message}", file=sys.stderr)
    return code


def load_settings(*, dev: bool = False) -> Settings:
    return Settings.from_env(dev=dev)
