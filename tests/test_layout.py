"""The tests mirror the source tree, and every test module is run by some tox env.

``tests/<area>/`` holds the tests of ``nexo/<area>/``; besides those, ``app`` (the app
and command line as a whole), ``contracts`` (the contract suite's own tests),
``support`` (the shared harness, no tests) and the suites with their own tox envs
(``client``, ``browser``) or none (``load``: benchmarks, run by hand).
"""

from __future__ import annotations

from pathlib import Path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
#: Directories of tests/ that mirror no nexo package, and why they exist.
OTHER_AREAS = {
    "app": "the app and command line as a whole",
    "contracts": "the contract suite's own tests (contracts/)",
    "support": "shared harness, no tests",
    "client": "tox env client",
    "browser": "tox env browser",
    "load": "benchmarks, run by hand; no env collects tests here",
}


def nexo_packages() -> set[str]:
    return {p.parent.name for p in (ROOT / "nexo").glob("*/__init__.py")}


def modules_of_tests() -> list[Path]:
    return sorted(TESTS.rglob("test_*.py"))


def test_every_area_mirrors_a_nexo_package_or_is_named() -> None:
    areas = {p.name for p in TESTS.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))}
    unknown = areas - nexo_packages() - OTHER_AREAS.keys()
    assert not unknown, f"tests/{sorted(unknown)} mirror no nexo/ package: move them to tests/<area>/"


def test_every_test_module_is_in_a_package_some_env_collects() -> None:
    for module in modules_of_tests():
        relative = module.relative_to(TESTS)
        assert relative.parts[0] not in {"load", "support"}, f"tests/{relative}: no tox env collects it"
        for parent in module.parents:
            if parent == TESTS.parent:
                break
            assert (parent / "__init__.py").exists(), f"{parent.relative_to(ROOT)} is not a package"
