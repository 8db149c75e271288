from __future__ import annotations

from pathlib import Path

import pytest

from edgenode.config import Config, describe
from edgenode.errors import ValidationFailed


def test_precedence_defaults_toml_env_flags(tmp_path: Path) -> None:
    toml = tmp_path / "edgenode.toml"
    toml.write_text('listen = "127.0.0.1:1000"\nlog_level = "debug"\n[workers]\nmax_cpu_ms = 111\ndefault_cpu_ms = 5\n')
    env = {"EDGENODE_LOG_LEVEL": "warning", "EDGENODE_WORKERS_MAX_CPU_MS": "222"}
    config = Config.load(toml_file=toml, env=env, overrides={"workers.max_cpu_ms": 333, "data_dir": None})
    assert config.listen == "127.0.0.1:1000"  # toml over default
    assert config.log_level == "warning"  # env over toml
    assert config.workers.max_cpu_ms == 333  # flag over env
    assert config.workers.default_cpu_ms == 5  # toml, untouched by later layers
    assert config.data_dir == Path(".edgenode")  # a None flag masks nothing


def test_list_settings_from_env_and_flags() -> None:
    config = Config.load(env={"EDGENODE_PEERS": "http://a:1, http://b:2"})
    assert config.peers == ["http://a:1", "http://b:2"]
    assert Config.load(env={}, overrides={"peers": ["http://c:3"]}).peers == ["http://c:3"]


@pytest.mark.parametrize(
    "text",
    ['listen = ', 'nosuch = 1', '[workers]\nnosuch = 1', '[workers]\nmax_cpu_ms = "many"', 'workers = 3'],
)
def test_bad_toml_is_a_clear_error(tmp_path: Path, text: str) -> None:
    toml = tmp_path / "bad.toml"
    toml.write_text(text)
    with pytest.raises(ValidationFailed):
        Config.load(toml_file=toml, env={})


def test_bad_env_value_names_the_variable() -> None:
    with pytest.raises(ValidationFailed, match="EDGENODE_HTTP_MAX_BODY_BYTES"):
        Config.load(env={"EDGENODE_HTTP_MAX_BODY_BYTES": "lots"})


def test_missing_config_file() -> None:
    with pytest.raises(ValidationFailed, match="does not exist"):
        Config.load(toml_file="/nonexistent/edgenode.toml", env={})


def test_every_setting_has_help() -> None:
    rows = describe()
    assert len(rows) > 20
    missing = [name for name, _, _, help_text in rows if not help_text.strip()]
    assert missing == []


def test_secrets_are_redacted() -> None:
    config = Config.load(env={"EDGENODE_FLEET_SECRET": "s3cret", "EDGENODE_ADMIN_TOKEN": "tok"})
    shown = config.as_dict()
    assert shown["fleet_secret"] == "<redacted>" and shown["admin_token"] == "<redacted>"
    assert config.fleet_secret_bytes() == b"s3cret"


def test_fleet_secret_file(tmp_path: Path) -> None:
    secret = tmp_path / "fleet"
    secret.write_text("from-file\n")
    assert Config.load(env={}, overrides={"fleet_secret_file": str(secret)}).fleet_secret_bytes() == b"from-file"
    assert Config.load(env={}).fleet_secret_bytes() is None


@pytest.mark.parametrize(("var", "value"), [("EDGENODE_STORE_READERS", "0"), ("EDGENODE_SANDBOXES_MAX_FILES", "0"),
                                            ("EDGENODE_WORKERS_TENANT_THREADS", "-1"),
                                            ("EDGENODE_EGRESS_ALLOW_NETWORKS", "10.0.0.0/8,not-a-network"),
                                            ("EDGENODE_STATE_SQL_MAX_LENGTH_BYTES", "100")])
def test_out_of_range_settings_stop_the_load(var: str, value: str) -> None:
    with pytest.raises(ValidationFailed) as info:
        Config.load(env={var: value})
    assert var.removeprefix("EDGENODE_").lower().split("_")[0] in info.value.message.lower()
