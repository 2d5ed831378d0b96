"""fpcd reads and writes files only where it was told to: links planted in the source
dir are never followed, and a target directory swapped for a link is never written
through."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import aiohttp

from fpcd.app import Daemon
from fpcd.fileio import atomic_write
from tests.conftest import api_session, eventually, issue_token
from tests.test_files import entry, make_daemon, put

__all__ = ["make_daemon"]


async def component(http: aiohttp.ClientSession, name: str) -> dict[str, Any]:
    async with http.get("/health") as r:
        found: dict[str, Any] = (await r.json())["components"][name]
        return found


# -- the source directory -------------------------------------------------------------------


async def test_a_link_in_the_source_dir_never_reads_the_keyring(
    tmp_path: Path, make_daemon: Any
) -> None:
    data, src = tmp_path / "data", tmp_path / "src"
    (src / "services" / "web").mkdir(parents=True)
    (src / "services" / "web" / "prod.json").write_text('{"port": 80}')
    # Planted before start: a file link and a directory link to the data dir.
    data.mkdir()
    (src / "services" / "keys").mkdir()
    (src / "services" / "keys" / "production.json").symlink_to(data / "keyring.json")
    (src / "services" / "datadir").symlink_to(data)
    os.mkfifo(src / "services" / "web" / "staging.json")  # must not hang the import
    daemon: Daemon = await make_daemon(sync={"source_dir": str(src)})
    assert (data / "keyring.json").exists()
    viewer = issue_token(daemon, "viewer")
    async with api_session(daemon, viewer) as http:
        async with http.get("/api/config/web?environment=prod") as r:
            assert (await r.json())["config"] == {"port": 80}  # regular files still import
        for env in ("production", "keyring"):
            for service in ("keys", "datadir"):
                async with http.get(f"/api/config/{service}?environment={env}") as r:
                    assert r.status == 404, await r.text()
        health = await component(http, "source_dir")
        assert health["status"] == "degraded"
        for path in (
            "services/keys/production.json",
            "services/datadir",
            "services/web/staging.json",
        ):
            assert path in health["detail"], health
        assert "symbolic link" in health["detail"]

        # Planted while running: the watcher sees it and refuses it the same way.
        (src / "services" / "keys" / "staging.json").symlink_to(data / "keyring.json")

        async def reported() -> bool:
            return "services/keys/staging.json" in (
                (await component(http, "source_dir"))["detail"] or ""
            )

        await eventually(reported)
        async with http.get("/api/config/keys?environment=staging") as r:
            assert r.status == 404
        async with http.get("/api/config") as r:
            listed = {s["serviceName"] for s in (await r.json())["items"]}
        assert listed == {"web"}

        # Replaced by a regular file: imported, and the complaint about it goes.
        link = src / "services" / "keys" / "staging.json"
        link.unlink()
        link.write_text('{"ok": true}')

        async def imported() -> bool:
            async with http.get("/api/config/keys?environment=staging") as r:
                return r.status == 200

        await eventually(imported)
        assert "services/keys/staging.json" not in (await component(http, "source_dir"))["detail"]


# -- file sync targets ---------------------------------------------------------------------


async def test_file_sync_never_writes_through_a_swapped_directory(
    tmp_path: Path, make_daemon: Any
) -> None:
    target_dir, elsewhere = tmp_path / "etc" / "web", tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = target_dir / "app.json"
    daemon: Daemon = await make_daemon(entry(out))
    await put(daemon, {"v": 1})
    await eventually(lambda: out.exists())
    # The target directory is swapped for a link to somewhere else.
    (tmp_path / "etc" / "web-old").mkdir()
    target_dir.rename(tmp_path / "etc" / "web-old" / "web")
    target_dir.symlink_to(elsewhere)
    await put(daemon, {"v": 2})
    async with api_session(daemon) as http:

        async def refused() -> bool:
            health = await component(http, "files")
            return health["status"] == "degraded" and str(out) in (health["detail"] or "")

        await eventually(refused)
        assert "symbolic link" in (await component(http, "files"))["detail"]
    assert list(elsewhere.iterdir()) == []  # nothing written through the link


def test_atomic_write_refuses_a_link_anywhere_in_the_directory(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    for path in (tmp_path / "link" / "f.json", tmp_path / "link" / "sub" / "f.json"):
        try:
            atomic_write(path, b"x", 0o600)
        except OSError as error:
            assert "symbolic link" in str(error)
        else:
            raise AssertionError("wrote through a link")
    assert list(real.iterdir()) == []
    # The file itself being a link: replaced, never written through.
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    (real / "f.json").symlink_to(victim)
    assert atomic_write(real / "f.json", b"new", 0o600)
    assert victim.read_bytes() == b"keep" and (real / "f.json").read_bytes() == b"new"
    assert not (real / "f.json").is_symlink()
