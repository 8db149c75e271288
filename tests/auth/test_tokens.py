from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgenode.auth import MIGRATIONS, Auth
from edgenode.errors import Forbidden, NotFound, TokenExpired, TokenRevoked, Unauthorized, ValidationFailed
from edgenode.store import Database


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def auth(tmp_path: Path, clock: Clock) -> Iterator[Auth]:
    db = Database(tmp_path / "node.db", MIGRATIONS).open()
    yield Auth(db, "edn_admin_secret", now=clock)
    db.close()


def test_admin_token(auth: Auth) -> None:
    p = auth.authenticate("edn_admin_secret")
    assert p.admin and p.tenant == "default"


def test_token_round_trip_and_tenant_scope(auth: Auth) -> None:
    issued = asyncio.run(auth.create_token("acme", name="ci"))
    p = auth.authenticate(issued.token)
    assert (p.tenant, p.admin, p.token_id) == ("acme", False, issued.id)
    with pytest.raises(Forbidden):
        p.require_admin()
    with pytest.raises(Forbidden):
        p.acting_for("other")
    assert p.acting_for("acme") is p


def test_admin_may_act_for_a_tenant(auth: Auth) -> None:
    p = auth.authenticate("edn_admin_secret").acting_for("acme")
    assert p.tenant == "acme" and p.admin
    with pytest.raises(ValidationFailed):
        auth.authenticate("edn_admin_secret").acting_for("../etc")


def test_tokens_are_stored_hashed(auth: Auth, tmp_path: Path) -> None:
    issued = asyncio.run(auth.create_token("acme"))
    raw = (tmp_path / "node.db").read_bytes() + (tmp_path / "node.db-wal").read_bytes()
    assert issued.token.encode() not in raw
    assert issued.token.split("_", 2)[2].encode() not in raw  # the secret may itself contain "_"


@pytest.mark.parametrize("token", [None, "", "nope", "edn_0123456789abcdef_" + "x" * 43])
def test_unknown_tokens(auth: Auth, token: str | None) -> None:
    with pytest.raises(Unauthorized) as info:
        auth.authenticate(token)
    assert type(info.value) is Unauthorized


def test_right_id_wrong_secret(auth: Auth) -> None:
    issued = asyncio.run(auth.create_token("acme"))
    forged = f"edn_{issued.id}_" + "A" * 43
    with pytest.raises(Unauthorized):
        auth.authenticate(forged)


def test_expiry(auth: Auth, clock: Clock) -> None:
    issued = asyncio.run(auth.create_token("acme", ttl_s=60))
    clock.t += 59
    auth.authenticate(issued.token)
    clock.t += 1
    with pytest.raises(TokenExpired):
        auth.authenticate(issued.token)
    assert asyncio.run(auth.list_tokens("acme"))[0]["state"] == "expired"


def test_revocation_and_tenant_bound_revoke(auth: Auth) -> None:
    a = asyncio.run(auth.create_token("acme"))
    asyncio.run(auth.create_token("other"))
    with pytest.raises(NotFound):
        asyncio.run(auth.revoke_token(a.id, tenant="other"))
    auth.authenticate(a.token)
    asyncio.run(auth.revoke_token(a.id, tenant="acme"))
    with pytest.raises(TokenRevoked):
        auth.authenticate(a.token)


@pytest.mark.parametrize("tenant", ["", "UPPER", "-lead", "a" * 64, "sp ace", "../x"])
def test_bad_tenant_names(auth: Auth, tenant: str) -> None:
    with pytest.raises(ValidationFailed):
        asyncio.run(auth.create_token(tenant))


def test_bad_ttl(auth: Auth) -> None:
    with pytest.raises(ValidationFailed):
        asyncio.run(auth.create_token("acme", ttl_s=0))


def test_deleting_a_tenant_removes_its_tokens(auth: Auth) -> None:
    issued = asyncio.run(auth.create_token("gone"))
    asyncio.run(auth.delete_tenant("gone"))
    with pytest.raises(Unauthorized):
        auth.authenticate(issued.token)
    with pytest.raises(NotFound):
        asyncio.run(auth.delete_tenant("gone"))


@pytest.mark.parametrize("ttl", [float("nan"), float("inf"), -float("inf"), 0, -1, 10 * 365 * 86_400 + 1, True, "60"])
def test_ttl_must_be_finite_positive_and_bounded(auth: Auth, ttl: object) -> None:
    with pytest.raises(ValidationFailed) as raised:
        asyncio.run(auth.create_token("acme", ttl_s=ttl))  # type: ignore[arg-type]
    assert raised.value.field == "ttl_s"
    assert auth.db.read_sync(lambda c: c.execute("SELECT COUNT(*) FROM tokens").fetchone()[0]) == 0


def test_longest_ttl_is_taken(auth: Auth, clock: Clock) -> None:
    issued = asyncio.run(auth.create_token("acme", ttl_s=10 * 365 * 86_400))
    assert issued.expires_at == clock.t + 10 * 365 * 86_400


def test_a_token_seen_recently_is_checked_without_reading_the_database(auth: Auth) -> None:
    issued = asyncio.run(auth.create_token("acme"))
    assert auth.authenticate_cached(issued.token) is None  # never seen: the database must be read
    auth.authenticate(issued.token)
    auth.db.close()  # no I/O from here on
    principal = auth.authenticate_cached(issued.token)
    assert principal is not None and principal.tenant == "acme"
    with pytest.raises(Unauthorized):
        auth.authenticate_cached("edn_0123456789abcdef_" + "x" * 30 + "\n")


def test_a_row_changed_underneath_takes_effect_once_the_lookup_cache_expires(
        auth: Auth, monkeypatch: pytest.MonkeyPatch) -> None:
    # As a revocation replicated from another node arrives: a row written without revoke_token().
    issued = asyncio.run(auth.create_token("acme"))
    auth.authenticate(issued.token)
    asyncio.run(auth.db.write(lambda c: c.execute("UPDATE tokens SET revoked_at = 1 WHERE id = ?", (issued.id,))))
    auth.authenticate(issued.token)  # still within the cache time
    monkeypatch.setattr("edgenode.auth.tokens.LOOKUP_CACHE_S", 0.0)
    with pytest.raises(TokenRevoked):
        auth.authenticate(issued.token)
