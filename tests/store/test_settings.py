"""Store settings are validated when loaded: no reader-less databases, no unbounded or NaN waits."""

from __future__ import annotations

import pytest

from edgenode.config import Config
from edgenode.errors import ValidationFailed


@pytest.mark.parametrize("env", [
    {"EDGENODE_STORE_READERS": "0"},
    {"EDGENODE_STORE_READERS": "-3"},
    {"EDGENODE_STATE_NAMESPACE_READERS": "0"},
    {"EDGENODE_STORE_WRITE_TIMEOUT_S": "0"},
    {"EDGENODE_STORE_WRITE_TIMEOUT_S": "nan"},
    {"EDGENODE_STORE_STUCK_WRITE_S": "inf"},
    {"EDGENODE_STORE_MIN_FREE_MB": "-1"},
])
def test_bad_store_settings_are_refused(env: dict[str, str]) -> None:
    with pytest.raises(ValidationFailed) as info:
        Config.load(env=env)
    assert info.value.field is not None and info.value.field in next(iter(env)).lower()


def test_good_store_settings_load() -> None:
    config = Config.load(env={"EDGENODE_STORE_READERS": "1", "EDGENODE_STORE_ACCEPT_FRESH_DB": "node.db,agents.db"})
    assert config.store.readers == 1 and config.store.accept_fresh_db == ["node.db", "agents.db"]
