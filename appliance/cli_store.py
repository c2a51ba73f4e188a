"""The appliance's store, opened for a one-off command (`load`, `ls`, `rm`, `reconcile`,
`verify`; `fill` probes the disks the same way): the config loaded, the disks probed once (one
out of service is left alone, and said so on stderr), a missing or newer index refused in one
line and, for the commands that need it, a reconcile of the titles they touch with its findings
on stderr. The daemon opens its store its own way (appliance/daemon.py); this module is what the
command modules share, and it imports the storage stack only once a command calls it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Collection

    from appliance.config import StorageConfig
    from appliance.repair import Finding
    from appliance.store import Store

CONFIG_HELP = "Appliance config (TOML); defaults when left out."


def disks_out_of_service(storage: StorageConfig) -> set[str]:
    """Probe the disks once, for a one-off command: a dead disk (EIO, gone, hung), or one not
    mounted, is left alone rather than failing the command or having its files dropped (the
    daemon takes it out and re-verifies it when it is back). Warnings on stderr."""
    from appliance.diskwatch import probe_disks, unusable
    from edgeflix.ui import warn

    probes = probe_disks([d.path for d in storage.disks], storage.index)
    dead = unusable(probes)
    for path, why in sorted(dead.items()):
        warn(f"disk {path} is out of service ({why}): its files are not checked or changed")
    for probe in probes:
        if probe.outcome == "read_only":
            warn(f"disk {probe.path} is read-only: its files are read, new files go elsewhere")
        elif probe.outcome == "full":
            warn(f"disk {probe.path} is full ({probe.detail}): its files are read and can be "
                 "removed; nothing new fits there")  # fmt: skip
    return set(dead)


def open_store(
    config: Path | None,
    findings: list[Finding] | None = None,
    *,
    check: bool = True,
    only: Collection[str] | None = None,
    create: bool = False,
) -> Store:
    """Load the config, open the store and, with `check`, reconcile it (only the titles in
    `only`, when given), reporting findings on stderr (and into `findings`, for a command
    that reports them itself). A reconcile reads every stored file's folder: a command that
    only reads the index (`ls`) does without, or it would take minutes on a full appliance.
    Only with `create` (`load`) is a missing index made: for the others it is a mistyped
    path or an appliance with nothing on it, told in one line."""
    from appliance import config as appliance_config

    storage = appliance_config.load(config).storage
    return store_of(storage, findings, check=check, only=only, create=create)


def store_of(
    storage: StorageConfig,
    findings: list[Finding] | None = None,
    *,
    check: bool = True,
    only: Collection[str] | None = None,
    create: bool = False,
) -> Store:
    """open_store on a loaded config's [storage]."""
    from appliance.index import no_index, refuse_newer
    from appliance.store import Store

    if not create and not storage.index.exists():
        raise no_index(storage.index)  # before the disk probes warn of anything
    refuse_newer(storage.index)  # so too: a newer Edgeflix's index, this one may misread
    store = Store(storage, out_of_service=disks_out_of_service(storage), create=create)
    if check:
        reconcile_and_warn(store, only, findings)
    return store


def reconcile_and_warn(
    store: Store, only: Collection[str] | None, findings: list[Finding] | None = None
) -> bool:
    """reconcile(store, only), its findings on stderr (and into `findings`); True when it
    found anything."""
    from appliance.findings import grouped, summary_line
    from appliance.repair import reconcile
    from edgeflix.ui import warn

    report = reconcile(store, only)
    for group in grouped(report.findings):  # a lost disk's thousands of files: a few lines
        warn(summary_line(group))
    if findings is not None:
        findings.extend(report.findings)
    return bool(report.findings)
