"""An independent implementation of the C2SP tlog protocols for the tests: the ``aics-witness``
witness and the ``aics-tlog`` verifier (PyPI), neither written here.

They need Python >= 3.12, which the test interpreter may not be: the first use
finds one (``$NEXO_TEST_PY312``, ``python3.13``/``python3.12`` on PATH, or the
pyenv installs) and makes a virtual environment for them under
``<repo>/.cache/aics-<versions>/`` (gitignored), reused by every later run.
Nothing else of the suite depends on it.
"""

from __future__ import annotations

import fcntl
import glob
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

PINNED = ("aics-witness==0.1.0", "aics-tlog==0.2.1")
REPO = Path(__file__).resolve().parents[2]
VENV = REPO / ".cache" / ("aics-" + "-".join(p.split("==")[1] for p in PINNED))


class AicsUnavailable(RuntimeError):
    pass


def _is_312(python: str) -> bool:
    try:
        done = subprocess.run(
            [python, "-c", "import sys; print(sys.version_info >= (3, 12))"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except OSError:
        return False
    return done.stdout.strip() == "True"


def _candidates() -> list[str]:
    found = [os.environ.get("NEXO_TEST_PY312", ""), sys.executable]
    found += [shutil.which(name) or "" for name in ("python3.13", "python3.12")]
    roots = [os.environ.get("PYENV_ROOT", ""), os.path.expanduser("~/.pyenv"), "/root/.pyenv"]
    if shutil.which("pyenv"):
        done = subprocess.run(["pyenv", "root"], capture_output=True, text=True, check=False)
        roots.insert(0, done.stdout.strip())
    for root in roots:
        if root:
            found += sorted(glob.glob(f"{root}/versions/3.1[2-9]*/bin/python3.1[2-9]"), reverse=True)
    return [c for c in found if c]


def venv_bin() -> Path:
    """The ``bin`` directory of a venv holding :data:`PINNED`; made once, shared by every run."""
    marker = VENV / "installed"
    if marker.exists():
        return VENV / "bin"
    VENV.parent.mkdir(parents=True, exist_ok=True)
    with open(VENV.parent / ".aics.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists():
            return VENV / "bin"
        python = next((c for c in _candidates() if _is_312(c)), None)
        if python is None:
            raise AicsUnavailable(
                "aics-witness needs Python >= 3.12: none found (set NEXO_TEST_PY312 to one)"
            )
        shutil.rmtree(VENV, ignore_errors=True)
        subprocess.run([python, "-m", "venv", str(VENV)], check=True, capture_output=True)
        done = subprocess.run(
            [str(VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", *PINNED],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise AicsUnavailable(f"pip install {' '.join(PINNED)} failed: {done.stderr[-2000:]}")
        marker.write_text(" ".join(PINNED) + "\n")
    return VENV / "bin"


def tool(name: str) -> str:
    """Path of the ``aics-witness`` or ``aics-tlog`` command."""
    return str(venv_bin() / name)


class AicsWitness:
    """A real ``aics-witness`` process on 127.0.0.1, configured for one Nexo log.

    ``extension_lines`` is on: Nexo's checkpoints carry three (index, time, previous hash).
    ``initial`` pins a checkpoint ``(size, base64 root)`` the witness starts from.
    """

    def __init__(self, directory: Path, name: str) -> None:
        from contracts.server import free_port

        self.directory = directory
        self.name = name
        self.port = free_port()
        self.config = directory / "witness.json"
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            [tool("aics-witness"), "init", "--config", str(self.config), "--name", name,
             "--listen", f"127.0.0.1:{self.port}"],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        self.vkey = done.stdout.strip().splitlines()[0]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def trust(self, origin: str, log_vkey: str, initial: tuple[int, str] | None = None) -> None:
        config = json.loads(self.config.read_text())
        entry: dict[str, object] = {"origin": origin, "vkeys": [log_vkey], "extension_lines": True}
        if initial is not None:
            entry["initial"] = {"size": initial[0], "root": initial[1]}
        config["logs"] = [entry]
        self.config.write_text(json.dumps(config, indent=2))

    def start(self) -> AicsWitness:
        import socket
        import time

        log = open(self.directory / "witness.log", "ab")
        self.process = subprocess.Popen(
            [tool("aics-witness"), "serve", "--config", str(self.config), "--log-level", "DEBUG"],
            stdout=log,
            stderr=log,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"aics-witness exited: {self.log_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"aics-witness did not listen: {self.log_text()[-2000:]}")

    def log_text(self) -> str:
        path = self.directory / "witness.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def evidence(self) -> list[object]:
        """Log-signed requests the witness refused as inconsistent (``aics-witness evidence``)."""
        done = subprocess.run(
            [tool("aics-witness"), "evidence", "--config", str(self.config)],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        data = json.loads(done.stdout or "[]")
        return list(data) if isinstance(data, list) else list(data.get("evidence", data.get("records", [])))

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
