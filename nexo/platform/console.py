"""What every ``nexo`` subcommand shares: exit codes and the one-line failure message.

Exit codes: 0 success, 1 a check found a problem, 2 bad configuration or usage.
"""

from __future__ import annotations

import sys

from nexo.platform.config import Settings

EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_CONFIG = 2


def fail(message: str, code: int = EXIT_CONFIG) -> int:
    """Print ``nexo: <message>`` on stderr and return ``code``."""
    print(f"nexo: {message}", file=sys.stderr)
    return code


def load_settings(*, dev: bool = False) -> Settings:
    return Settings.from_env(dev=dev)
