"""The code stays lint-clean, formatted and type-checked: part of the one test command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff_check() -> None:
    r = run(str(BIN / "ruff"), "check", "fpcd", "tests", "benchmarks")
    assert r.returncode == 0, r.stdout + r.stderr


def test_ruff_format() -> None:
    r = run(str(BIN / "ruff"), "format", "--check", "fpcd", "tests", "benchmarks")
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_strict() -> None:
    """Strict, over fpcd, tests and benchmarks (`files` in pyproject.toml)."""
    r = run(str(BIN / "mypy"))
    assert r.returncode == 0, r.stdout + r.stderr
    checked = sum(len(list((ROOT / d).rglob("*.py"))) for d in ("fpcd", "tests", "benchmarks"))
    assert f"in {checked} source files" in r.stdout, r.stdout


def test_imports_keep_the_package_layers() -> None:
    """The allowed imports between packages ([tool.importlinter] in pyproject.toml): each
    layer imports only those below it, the client no part of the daemon, and the pure core
    no I/O, event loop or clock (STYLE: pure core, I/O at edges)."""
    r = run(str(BIN / "lint-imports"), "--no-cache")
    assert r.returncode == 0, r.stdout + r.stderr
    assert " kept, 0 broken" in r.stdout, r.stdout


def test_client_types_reach_users(tmp_path: Path) -> None:
    """`fpcd.client` is typed for its users (py.typed, no Any leaking from the lazy
    exports): a strict mypy run over code that uses it, and over fpcd/client itself."""
    assert (ROOT / "fpcd" / "py.typed").exists()
    user = tmp_path / "user_code.py"
    user.write_text(
        "from fpcd.client import ConfigurationClient, EvaluationResult, SyncConfigurationClient\n"
        "from fpcd.client.openfeature import FpcdProvider\n"
        "\n"
        "async def flags(client: ConfigurationClient) -> dict[str, EvaluationResult]:\n"
        "    config: dict[str, object] = await client.get_configuration()\n"
        "    assert config is not None\n"
        "    return await client.evaluate_flags({'userId': 'u'})\n"
        "\n"
        "def enabled(client: SyncConfigurationClient) -> bool:\n"
        "    FpcdProvider(client)\n"
        "    return client.evaluate('k').enabled\n"
        "\n"
        "reveal_type(ConfigurationClient)\n"
    )
    r = run(str(BIN / "mypy"), "--strict", "fpcd/client", str(user))
    assert r.returncode == 0, r.stdout + r.stderr
    assert 'Revealed type is "def (*' in r.stdout, r.stdout
