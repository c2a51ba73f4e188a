"""A serving worker's view for its server: the key file's grants move it, so routes the
server remembered (fast routes) are forgotten in the same step as the site's keys change."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.keyfile import KeyFile, KeySet, write_keys
from appliance.worker import ServingView

A, B = b"a" * 16, b"b" * 16


class _Site:
    def __init__(self, required: bool = False, keys: dict[str, bytes] | None = None) -> None:
        self.required = required
        self.keys: dict[str, bytes] = dict(keys or {})
        self.keys_generation = 0


def _publish(path: Path, generation: int, required: bool, keys: dict[str, bytes]) -> None:
    write_keys(path, KeySet(generation, required, keys))


def test_refresh_says_when_the_grants_changed(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    site, key_file = _Site(False, {"k1": A}), KeyFile(path)
    _publish(path, 1, False, {"k1": A})
    assert not key_file.refresh(site) and site.keys_generation == 1  # same grants, new file
    _publish(path, 2, True, {"k1": A})
    assert key_file.refresh(site) and site.required  # tokens turned on
    _publish(path, 3, True, {"k1": B})
    assert key_file.refresh(site) and site.keys == {"k1": B}  # same id, new secret
    _publish(path, 4, True, {"k1": B, "k2": A})
    assert key_file.refresh(site)
    _publish(path, 5, True, {"k2": A})
    assert key_file.refresh(site) and site.keys == {"k2": A}  # a key dropped
    _publish(path, 6, False, {"k2": A})
    assert key_file.refresh(site) and not site.required


def test_the_view_moves_with_the_grants_not_with_each_file(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    site = _Site(False, {"k1": A})
    _publish(path, 1, False, {"k1": A})
    view = ServingView(lambda: 7, KeyFile(path), site)
    first = view()
    _publish(path, 2, False, {"k1": A})
    assert view() == first and site.keys_generation == 2
    _publish(path, 3, True, {"k1": A})
    assert view() != first and site.required


def test_a_failing_index_does_not_hold_back_forgetting(tmp_path: Path) -> None:
    """The server keeps its last view (and its routes) while the index cannot be read; keys
    that turned tokens on must still void them."""
    path = tmp_path / "keys.json"
    site = _Site(False, {"k1": A})
    _publish(path, 1, False, {"k1": A})
    failing = False

    def storage() -> object:
        if failing:
            raise OSError("index unreadable")
        return 7

    view = ServingView(storage, KeyFile(path), site)
    kept = view()  # what the server holds on to
    failing = True
    with pytest.raises(OSError):
        view()  # nothing else changed: the error goes to the server, which logs it
    _publish(path, 2, True, {"k1": A})
    assert view() != kept and site.required
    with pytest.raises(OSError):
        view()


def test_no_key_file_is_the_storage_view_alone() -> None:
    views = iter([1, 1, 2])
    view = ServingView(lambda: next(views), None, _Site())
    assert view() == view() != view()
