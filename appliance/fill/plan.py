"""The fill plan: which titles this appliance should hold, where to fetch each from, when
(the fill window) and how fast (the bandwidth cap). Read from `[fill] plan` (a JSON file),
built by `edgeflix appliance fill --from URL --title ID`, later delivered by the fleet.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from appliance.fill.http1 import render_get
from appliance.fill.redact import redact
from appliance.fill.transport import split_url
from appliance.fill.window import parse_window, resolve_zone
from edgeflix.errors import EdgeflixError
from edgeflix.fillwindow import FillWindow, WindowError
from edgeflix.titlefiles import TitleFilesError, check_title_id


class PlanError(EdgeflixError):
    """A fill plan that cannot be read or does not make sense."""


# The validation context under which fields a model does not know are dropped, not refused.
_IGNORE_UNKNOWN = {"unknown": "ignore"}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _known_fields(cls, data: Any, info: ValidationInfo) -> Any:
        """Under _IGNORE_UNKNOWN, keys this model lacks are left out (parse_plan says when)."""
        if isinstance(data, dict) and info.context == _IGNORE_UNKNOWN:
            return {k: v for k, v in data.items() if k in cls.model_fields}
        return data


def _check_url(url: str) -> str:
    """A source the fill can make requests of (the same checks as transport's), so one bad
    URL is refused with the plan instead of failing every run that reaches it."""
    shown = redact(url)  # a peer's source carries a token, and errors are logged
    if not url.startswith(("http://", "https://")) or len(url) < 8:
        raise ValueError(f"source {shown!r} must be an http:// or https:// URL")
    url = url.rstrip("/")
    try:
        origin, target = split_url(url)
        render_get(origin.host_field, target.rstrip("/") + "/titles/")
    except ValueError as exc:
        raise ValueError(f"source {shown!r} is not a usable URL: {redact(str(exc))}") from None
    return url


class PlannedTitle(_Model):
    id: str
    # SHA-256 of the files.json bytes the plan means; None accepts whatever the source has.
    digest: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    # Tried in order: a peer first, the origin last, so a sick peer falls back to the origin.
    sources: tuple[str, ...] = Field(min_length=1)
    # Bytes of the whole title when the planner knows them: a title waiting for its site
    # peer keeps its transfer time at the cap for the origin (peerwait.py).
    size: int | None = Field(None, ge=0)

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        try:
            return check_title_id(value)
        except TitleFilesError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("sources")
    @classmethod
    def _urls(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_check_url(u) for u in value)


class FillPlan(_Model):
    # Built in code it may be empty; a JSON document must name it (parse_plan), since with
    # `prune` a plan without titles deletes every title held.
    titles: tuple[PlannedTitle, ...] = ()
    # "HH:MM-HH:MM" local wall time in `timezone`; None fills at any hour.
    window: str | None = None
    timezone: str = "local"
    # Bits per second over all streams together; None is uncapped.
    cap_bps: int | None = Field(None, gt=0)
    streams: int = Field(4, ge=1, le=64)
    # Whether titles not in the plan are deleted once the plan's titles are complete.
    prune: bool = True
    # Whether a title whose site peer (any source but the last) lacks it yet waits for the
    # peer (runner.py, peerwait.py) rather than taking it from the origin at once. The
    # fleet's plans do; `appliance fill --from` does not (an operator asked for it now).
    wait_for_peers: bool = True

    @field_validator("titles")
    @classmethod
    def _unique(cls, value: tuple[PlannedTitle, ...]) -> tuple[PlannedTitle, ...]:
        ids = [t.id for t in value]
        if len(set(ids)) != len(ids):
            raise ValueError("a title is listed twice")
        return value

    def fill_window(self) -> FillWindow | None:
        return parse_window(self.window, self.timezone) if self.window else None

    def check(self) -> FillPlan:
        """Validate what pydantic cannot: the window spec and the zone name."""
        self.fill_window()
        resolve_zone(self.timezone)
        return self


def parse_plan(raw: bytes, source: str, *, ignore_unknown: bool = False) -> FillPlan:
    """A plan document (a file, or the fleet's): PlanError (one line, naming `source`) for
    anything wrong in it, a missing `titles` too.

    `ignore_unknown`: a plan the fleet built (and the appliance saved) drops fields it does
    not know: a later version's (a rollback after it saved the plan, a newer manager) must
    not make the plan, or the daemon, unusable. A file an operator writes (`[fill] plan`,
    `appliance fill --plan`) refuses them: a misspelt `"prnue": false` must not pass."""
    context = _IGNORE_UNKNOWN if ignore_unknown else None
    try:
        plan = FillPlan.model_validate(json.loads(raw), context=context)
    except RecursionError:  # json's decoder recurses per level: "[[[[…" exhausts the stack
        raise PlanError(f"{source}: not a valid fill plan: nested too deeply") from None
    except (ValueError, ValidationError) as exc:
        first = str(exc).splitlines()
        detail = first[0] if first else type(exc).__name__
        if isinstance(exc, ValidationError) and exc.errors():
            err = exc.errors()[0]
            detail = f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
        raise PlanError(f"{source}: not a valid fill plan: {detail}") from None
    try:
        plan.check()
    except WindowError as exc:
        raise PlanError(f"{source}: {exc}") from None
    if "titles" not in plan.model_fields_set:
        # `{}` (a truncated export, a placeholder) would mean "hold nothing": prune it all.
        raise PlanError(
            f'{source}: not a valid fill plan: titles: missing (write "titles": [] to mean '
            "that this appliance holds no title)"
        )
    return plan


def load_plan(path: Path) -> FillPlan:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise PlanError(f"{path}: no such fill plan") from None
    except OSError as exc:
        raise PlanError(f"{path}: cannot read: {exc.strerror}") from None
    return parse_plan(raw, str(path))
