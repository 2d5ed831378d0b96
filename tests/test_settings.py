"""Settings: file, environment and flags in the documented order; one clear line per error."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import msgspec
import pytest

from fpcd.domain.errors import SettingsError
from fpcd.settings import FileSettings, Settings, changed_keys, load_settings

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fpcd.toml"
    path.write_text(text)
    return path


def test_defaults_are_the_embedded_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = load_settings(None, environ={})
    assert s.server.api_host == "127.0.0.1" and s.server.api_port == 3001
    assert s.server.ws_port == 8080
    assert s.data_dir == tmp_path / "fpcd-data"
    assert s.runtime_dir == s.data_dir
    assert s.api_socket == tmp_path / "fpcd-data" / "fpcd.sock"
    assert s.database == tmp_path / "fpcd-data" / "fpcd.db"
    assert s.upstream.postgres_url == "" and s.upstream.redis_url == ""


def test_systemd_directories(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/fpcd")
    monkeypatch.setenv("RUNTIME_DIRECTORY", "/run/fpcd")
    s = load_settings(None, environ={})
    assert s.data_dir == Path("/var/lib/fpcd") and s.api_socket == Path("/run/fpcd/fpcd.sock")


def test_seed_variables_and_fpcd_overrides(tmp_path: Path) -> None:
    env = {
        "DATABASE_URL": "postgresql://db/fpcd",
        "REDIS_URL": "redis://r:6379/0",
        "CONFIG_ENCRYPTION_KEY": "k" * 44,
        "CONFIG_API_PORT": "4001",
        "CONFIG_WS_PORT": "9090",
        "LOG_LEVEL": "debug",
        "NODE_ENV": "production",
        "FPCD_DATA_DIR": str(tmp_path / "d"),
        "FPCD_API_HOST": "0.0.0.0",
        "FPCD_SERVER__ALLOW_INSECURE": "true",
        "FPCD_LIMITS__MAX_BODY_BYTES": "2048",
        "FPCD_SERVER__SHUTDOWN_TIMEOUT": "250ms",
    }
    s = load_settings(None, environ=env)
    assert s.upstream.postgres_url == "postgresql://db/fpcd"
    assert s.upstream.redis_url == "redis://r:6379/0"
    assert s.secrets.encryption_key == "k" * 44
    assert (s.server.api_port, s.server.ws_port) == (4001, 9090)
    assert s.log.level == "debug" and s.server.default_environment == "production"
    assert s.data_dir == tmp_path / "d" and s.server.api_host == "0.0.0.0"
    assert s.limits.max_body_bytes == 2048 and s.server.shutdown_timeout == 0.25


def test_precedence_flags_over_env_over_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\napi_port = 1111\nws_port = 2222\n[log]\nlevel = 'error'\n")
    s = load_settings(path, environ={})
    assert (s.server.api_port, s.server.ws_port, s.log.level) == (1111, 2222, "error")
    s = load_settings(path, environ={"CONFIG_API_PORT": "3333"})
    assert (s.server.api_port, s.server.ws_port) == (3333, 2222)
    s = load_settings(
        path, environ={"CONFIG_API_PORT": "3333"}, overrides={"server": {"api_port": 4444}}
    )
    assert s.server.api_port == 4444


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ("[server]\napi_prot = 1\n", {}, "server.api_prot: unknown key"),
        ("[sever]\napi_port = 1\n", {}, "sever: unknown key"),
        ("[server]\napi_port = 'abc'\n", {}, "server.api_port: expected `int`"),
        ("[server]\napi_port = 70000\n", {}, "server.api_port: expected `int` <= 65535"),
        ("[server]\nshutdown_timeout = 'soon'\n", {}, "server.shutdown_timeout: expected a dur"),
        ("[server]\nsocket_mode = '999'\n", {}, "server.socket_mode: expected octal"),
        ("[log]\nlevel = 'loud'\n", {}, "log.level: invalid enum value 'loud' (one of: debug,"),
        ("[server\napi_port = 1\n", {}, "not valid TOML"),
        ("", {"CONFIG_API_PORT": "http"}, "CONFIG_API_PORT: expected `int`"),
        ("", {"FPCD_LIMITS__MAX_BODY_BYTES": "0"}, "FPCD_LIMITS__MAX_BODY_BYTES: expected"),
        ("", {"FPCD_LIMITS__NOPE": "1"}, "FPCD_LIMITS__NOPE: unknown key"),
    ],
)
def test_bad_settings_give_one_line_naming_the_key(
    tmp_path: Path, text: str, env: dict[str, str], message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(SettingsError) as raised:
        load_settings(path, environ=env)
    text_of_error = str(raised.value).replace("`", "")
    assert message.replace("`", "") in text_of_error
    assert "\n" not in str(raised.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="file not found"):
        load_settings(tmp_path / "nope.toml", environ={})


def test_example_file_loads_and_documents_every_key() -> None:
    example = ROOT / "config.example.toml"
    load_settings(example, environ={})
    documented = tomllib.loads(example.read_text())
    defaults = msgspec.to_builtins(Settings(), enc_hook=float)
    text = example.read_text()
    for section, keys in defaults.items():
        if section == "files":  # a list of tables: documented as a commented example
            for key in FileSettings.__struct_fields__:
                assert re.search(rf"^# {key} = ", text, re.M), f"files.{key} is not documented"
            continue
        for key in keys:
            assert key in documented.get(section, {}), f"{section}.{key} is not in the example"
        assert re.search(rf"^\[{section}\]$", text, re.M)


def test_changed_keys() -> None:
    a = load_settings(None, environ={})
    b = load_settings(None, environ={"LOG_LEVEL": "debug", "CONFIG_API_PORT": "1"})
    assert sorted(changed_keys(a, b)) == ["log.level", "server.api_port"]
