"""The appliance's /metrics against a strict reading of the text exposition format: a disk path
that is not UTF-8 still gives a body every scrape can read, and faults of a file system two
configured disks share are counted once, not once per disk."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from appliance import config as appliance_config
from appliance.config import ApplianceConfig
from appliance.disks import TITLES_DIR
from appliance.server import AdminSite, AdminView, disk_families
from edgeflix.http.plan import ResponsePlan
from edgeflix.http.request import RequestHead
from edgeflix.http.stats import ServerStats
from edgeflix.metrics import Sample, render
from tests.appliance.storage_fixtures import storage_toml

Labels = dict[str, str]


def parse_exposition(body: bytes) -> list[tuple[str, Labels, str]]:
    """(name, labels, value) of each sample, as a strict parser (Prometheus' expfmt) reads
    them: the body must be UTF-8, and a label value knows only the escapes \\\\, \\" and \\n."""
    samples = []
    # Strict: decoding raises on any invalid byte. Lines end at \n only (not str.splitlines,
    # which also breaks at \x1e, \x85, U+2028, all fine inside a label value).
    for line in body.decode("utf-8").split("\n"):
        if not line or line.startswith("#"):
            continue
        name, sep, rest = line.partition("{")
        labels: Labels = {}
        if sep:
            rest = _labels(rest, labels)
        else:
            name, _, rest = line.partition(" ")
        assert rest.startswith(" ") or not sep, line
        samples.append((name, labels, rest.strip()))
    return samples


def _labels(text: str, into: Labels) -> str:
    """Read `k="v",...}` into `into`; return what follows the closing brace."""
    i = 0
    while text[i] != "}":
        key, _, _ = text[i:].partition("=")
        i += len(key) + 1
        assert text[i] == '"', text
        i += 1
        value = []
        while text[i] != '"':
            if text[i] == "\\":
                i += 1
                escaped = {"\\": "\\", '"': '"', "n": "\n"}.get(text[i])
                assert escaped is not None, f"invalid escape sequence \\{text[i]} in {text!r}"
                value.append(escaped)
            else:
                value.append(text[i])
            i += 1
        into[key] = "".join(value)
        i += 1
        if text[i] == ",":
            i += 1
    return text[i + 1 :]


def with_disk_paths(cfg: ApplianceConfig, *paths: Path) -> ApplianceConfig:
    """`cfg` with its disks at `paths`, unvalidated: as if the config load had let them by."""
    disks = tuple(
        d.model_copy(update={"path": p}) for d, p in zip(cfg.storage.disks, paths, strict=True)
    )
    return cfg.model_copy(update={"storage": cfg.storage.model_copy(update={"disks": disks})})


def scrape(site: AdminSite) -> bytes:
    request = RequestHead("GET", "/metrics", "/metrics", "", 1, {}, True)
    plan = site.route(request, ("metrics",), "127.0.0.1")
    assert isinstance(plan, ResponsePlan) and plan.status == 200
    (body,) = plan.body
    assert isinstance(body, bytes)
    return body


def test_a_disk_path_that_is_not_utf8_still_gives_a_readable_scrape(tmp_path: Path) -> None:
    cfg = appliance_config.load(storage_toml(tmp_path, tiers=("hdd",)))
    # A real folder whose name is the byte 0xff: Python names it with the surrogate \udcff.
    os.mkdir(os.fsencode(tmp_path) + b"/disk\xff")
    bad = tmp_path / os.fsdecode(b"disk\xff")
    assert "\udcff" in str(bad) and bad.is_dir()
    cfg = with_disk_paths(cfg, bad)
    view = AdminView(ServerStats(), 1, 1, {})

    samples = parse_exposition(scrape(AdminSite(cfg, lambda: view)))

    # The undecodable byte reads \xff (a backslash, then text), the rest of the path as is.
    shown = f"{tmp_path}/disk\\xff"
    serving = [s for s in samples if s[0] == "edgeflix_appliance_disk_in_service"]
    assert serving == [("edgeflix_appliance_disk_in_service", {"disk": shown}, "1")]
    sizes = {s[1]["disk"] for s in samples if s[0] == "edgeflix_appliance_disk_size_bytes"}
    assert sizes == {shown}


def test_lone_surrogates_and_the_three_escapes_render_as_valid_label_values() -> None:
    path = 'a\\b"c\nd\udcff'  # an undecodable byte 0xff, as os.fsdecode gives it
    other = "e\ud800"  # a surrogate no decoding makes
    text = render([("m", "gauge", "h", [Sample({"path": path, "other": other}, 1)])])
    ((_, labels, value),) = parse_exposition(text.encode("utf-8"))
    assert labels == {"path": 'a\\b"c\nd\\xff', "other": "e\\ud800"} and value == "1"


# Lone surrogates drawn on purpose: st.characters() never gives them.
SURROGATE = st.integers(0xD800, 0xDFFF).map(chr)


@given(st.text(st.characters() | SURROGATE))
def test_any_label_value_renders_to_utf8_a_strict_parser_reads_back(value: str) -> None:
    body = render([("m", "gauge", "h", [Sample({"v": value}, 2)])]).encode("utf-8")
    ((_, labels, _),) = parse_exposition(body)
    if not any("\ud800" <= c <= "\udfff" for c in value):
        assert labels == {"v": value}  # text UTF-8 can carry comes through unchanged


def fault_counts(families: list[tuple[str, str, str, list[Sample]]], name: str) -> Labels:
    (samples,) = [f[3] for f in families if f[0] == name]
    return {s.labels["disk"]: str(s.value) for s in samples}


def test_faults_of_a_shared_file_system_count_once_on_its_first_disk(tmp_path: Path) -> None:
    """The README's layout: var/disk0 and var/disk1, two folders of one file system. One slow
    read there must sum to one over `disk`, not two."""
    cfg = appliance_config.load(storage_toml(tmp_path, tiers=("ssd", "hdd")))
    first, second = (d.path for d in cfg.storage.disks)
    dev = os.stat(first).st_dev
    assert os.stat(second).st_dev == dev  # both under tmp_path
    families = disk_families(cfg, faults={dev: [1, 3]})
    slow = fault_counts(families, "edgeflix_appliance_disk_slow_reads_total")
    failed = fault_counts(families, "edgeflix_appliance_disk_read_errors_total")
    assert slow == {str(first): "1", str(second): "0"}
    assert failed == {str(first): "3", str(second): "0"}


def test_a_shared_file_system_keeps_its_carrier_when_that_disk_goes_out_of_service(
    tmp_path: Path,
) -> None:
    """The counts stay on the first disk of the file system in config order: moved to the next
    one in service, its counter would jump 0 -> 7 and increase() and per-disk alerts fire on
    it for errors it never had."""
    cfg = appliance_config.load(storage_toml(tmp_path, tiers=("ssd", "hdd")))
    first, second = (d.path for d in cfg.storage.disks)
    for disk in (first, second):
        (disk / TITLES_DIR).mkdir()  # as the store leaves a disk it opened
    dev = os.stat(first).st_dev
    name = "edgeflix_appliance_disk_read_errors_total"
    both = disk_families(cfg, faults={dev: (2, 7)})
    assert fault_counts(both, name) == {str(first): "7", str(second): "0"}
    for out in ({str(first.resolve())}, {str(first.resolve()), str(second.resolve())}):
        gone = disk_families(cfg, out, faults={dev: (2, 7)})
        assert fault_counts(gone, name) == {str(first): "7", str(second): "0"}
        slow = fault_counts(gone, "edgeflix_appliance_disk_slow_reads_total")
        assert slow == {str(first): "2", str(second): "0"}
    second_out = disk_families(cfg, {str(second.resolve())}, faults={dev: (2, 7)})
    assert fault_counts(second_out, name) == {str(first): "7", str(second): "0"}


def test_an_out_of_service_disk_without_its_titles_folder_is_matched_to_no_file_system(
    tmp_path: Path,
) -> None:
    """Unmounted, its mount point is the root file system's: it carries nothing (its
    device is not known) and the next disk of that file system carries the counts."""
    cfg = appliance_config.load(storage_toml(tmp_path, tiers=("ssd", "hdd")))
    first, second = (d.path for d in cfg.storage.disks)
    (second / TITLES_DIR).mkdir()
    dev = os.stat(second).st_dev
    gone = disk_families(cfg, {str(first.resolve())}, faults={dev: (2, 7)})
    assert fault_counts(gone, "edgeflix_appliance_disk_read_errors_total") == {str(second): "7"}


def test_disks_on_their_own_file_systems_each_keep_their_own_faults(tmp_path: Path) -> None:
    """/dev/shm is another file system than tmp_path on most Linux machines: each disk shows
    its own device's counts, as before."""
    cfg = appliance_config.load(storage_toml(tmp_path, tiers=("ssd", "hdd")))
    first = cfg.storage.disks[0].path
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(first).st_dev:
        return  # no second file system to hand
    other = shm / f"edgeflix-test-{os.getpid()}-{tmp_path.name}"
    other.mkdir()
    try:
        cfg = with_disk_paths(cfg, first, other)
        faults = {os.stat(first).st_dev: [2, 0], os.stat(other).st_dev: [5, 1]}
        families = disk_families(cfg, faults=faults)
        slow = fault_counts(families, "edgeflix_appliance_disk_slow_reads_total")
        assert slow == {str(first): "2", str(other): "5"}
    finally:
        other.rmdir()
