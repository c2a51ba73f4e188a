"""The fleet database does not grow with the age of the fleet (fleet/store.py): join tokens
long expired are pruned as new ones are made, while a recently expired one is still named
as expired to the operator who tries it."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeflix.proto import auth
from fleet.store import EXPIRED_TOKENS_KEPT_S, EnrolmentRefused, Store

DAY = 86_400.0


def _rows(store: Store) -> int:
    return int(store.conn.execute("SELECT COUNT(*) FROM join_tokens").fetchone()[0])


def test_join_tokens_made_daily_for_years_stay_bounded(tmp_path: Path) -> None:
    store = Store(tmp_path / "fleet.sqlite")
    ttl = 7 * DAY
    key = auth.public_key(auth.new_private_key())
    for day in range(3 * 365):
        store.add_join_token(f"token-{day}", "home", day * DAY, ttl)
        if day % 10 == 0:  # some are used, most lapse
            store.enrol(f"token-{day}", f"box{day}", "http://10.0.0.1:8081", key, "", day * DAY)
    # Those that could still enrol or still be reported as expired, and the one each enrolled
    # appliance used, not three years' worth.
    enrolled = len(store.appliances())
    assert _rows(store) <= (ttl + EXPIRED_TOKENS_KEPT_S) / DAY + 1 + enrolled
    store.close()


def test_recently_expired_token_is_still_reported_as_expired(tmp_path: Path) -> None:
    store = Store(tmp_path / "fleet.sqlite")
    store.add_join_token("old", "home", 0.0, DAY)
    store.add_join_token("new", "home", 3 * DAY, DAY)  # prunes nothing recent
    key = auth.public_key(auth.new_private_key())
    with pytest.raises(EnrolmentRefused, match="expired"):
        store.enrol("old", "b1", "http://10.0.0.1:8081", key, "", 3 * DAY)
    assert store.enrol("new", "b1", "http://10.0.0.1:8081", key, "", 3 * DAY).site == "home"
    store.close()


def test_used_token_of_an_enrolled_appliance_is_kept(tmp_path: Path) -> None:
    """Pruning keeps the token an enrolled appliance used: a box whose enrol reply was lost
    enrols again with it (idempotent) however long it was off, and the token it spent is
    still named as used, not unknown, to whoever tries it again."""
    store = Store(tmp_path / "fleet.sqlite")
    key = auth.public_key(auth.new_private_key())
    store.add_join_token("spent", "home", 0.0, DAY)
    store.enrol("spent", "b1", "http://10.0.0.1:8081", key, "", 0.0)
    later = DAY + EXPIRED_TOKENS_KEPT_S + 30 * DAY
    store.add_join_token("new", "home", later, DAY)  # prunes tokens long expired
    assert store.enrol("spent", "b1", "http://10.0.0.2:8081", key, "", later).site == "home"
    other = auth.public_key(auth.new_private_key())
    with pytest.raises(EnrolmentRefused, match="already used"):
        store.enrol("spent", "b2", "http://10.0.0.3:8081", other, "", later)
    store.remove("b1")  # once its appliance is gone, the spent token may go too
    store.add_join_token("newer", "home", later + DAY, DAY)
    assert _rows(store) == 2
    store.close()
