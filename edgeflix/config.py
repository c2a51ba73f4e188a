"""TOML configuration into frozen, validated pydantic models, once, at start.

Every daemon declares its schema as `ConfigModel` subclasses; unknown keys are errors
that name the file and the key, and so is a value of the wrong type (`workers = "4"`):
models are strict, but for the forms the release before took that read one way (see
toml_form): an integer where a float is wanted, a whole float where an integer is, the
boolean spellings (`no`, `0`, `False`), a string for a path (`ConfigPath`) and an array for
a tuple (`ConfigList`). Environment variables override file values:
`<PREFIX>__SECTION__KEY=value` (value parsed as a TOML value, else taken as text, which is
read as a number where one is wanted: `04`, `.5`); a variable that nearly has that form
(one `_`, lower case, a plural) is logged as ignored.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shlex
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Strict,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from edgeflix.errors import ConfigError
from edgeflix.log import event

log = logging.getLogger(__name__)


class ConfigModel(BaseModel):
    """Base of every config section: frozen, and strict about unknown keys and types."""

    # No inf or nan: `peer_wait_s = inf` is valid TOML and reads as "for ever", but every
    # duration and rate here ends in arithmetic that cannot take it (timedelta, round()).
    # Strict: `workers = "4"` is a typo to name, not a value to coerce. The forms lax
    # pydantic took that have one reading still load (toml_form): configs that started
    # before the models were strict start after.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=True)

    @field_validator("*", mode="before")
    @classmethod
    def _toml_form(cls, value: Any, info: ValidationInfo) -> Any:
        return toml_form(value, cls.model_fields[str(info.field_name)].annotation)


M = TypeVar("M", bound=ConfigModel)
T = TypeVar("T")

# A path in a config: TOML writes it as a string, which strict pydantic refuses for a Path.
ConfigPath = Annotated[Path, Strict(False)]
# A TOML array held as a tuple (strict pydantic takes only a tuple); its items stay strict.
ConfigList = Annotated[tuple[T, ...], Strict(False)]


class EnvText(str):
    """A variable's value TOML does not read (`no`, `04`, `.5`, `a.example`): text, which
    toml_form reads as a number where one is wanted, as lax pydantic did before."""


def parse_env_value(raw: str) -> Any:
    """Parse an override as a TOML value (`8`, `true`, `["a"]`), else keep the string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return EnvText(raw)


# Lax pydantic, for the forms strict models took before: its boolean table (true/false,
# yes/no, on/off, t/f, y/n, 1/0 in any case; the numbers 0 and 1) and numbers as text.
_LAX_BOOL: TypeAdapter[bool] = TypeAdapter(bool)
_LAX_NUMBER: dict[type, TypeAdapter[Any]] = {int: TypeAdapter(int), float: TypeAdapter(float)}


def toml_form(value: Any, annotation: Any) -> Any:
    """`value` for a field of type `annotation` in the form a strict model takes, where it
    was given in another with one reading: a boolean's spellings, a whole float for an
    integer (3600.0, 1e4), a variable's text for a number. Anything else is returned for
    the strict model to refuse; a fractional float for an integer and a non-array for an
    array are refused here, in words a TOML user knows."""
    kinds = _kinds(annotation)
    if isinstance(value, EnvText):
        value = _env_text(str(value), kinds)
    if kinds == {bool} and isinstance(value, str | int | float) and not isinstance(value, bool):
        try:
            return _LAX_BOOL.validate_python(value)
        except ValidationError:
            return value
    if kinds == {int} and isinstance(value, float) and math.isfinite(value):
        if not value.is_integer():
            raise PydanticCustomError(
                "int_from_float", "Input should be a valid integer, got a number with a "
                "fractional part"
            )  # fmt: skip
        return int(value)
    if kinds == {tuple} and not isinstance(value, list | tuple):
        items = _kinds(_array_item(annotation))
        of = "text" if items <= {str} else "table" if items == {dict} else "value"
        raise PydanticCustomError("array_type", "Input should be an array", {"items": of})
    return value


def _env_text(text: str, kinds: frozenset[type]) -> Any:
    """A variable's text TOML does not read as a number (`04`, `.5`, `1.`), read as lax
    pydantic did where a number is wanted; else the text, for the strict model to judge."""
    adapter = _LAX_NUMBER.get(next(iter(kinds))) if len(kinds) == 1 else None
    if adapter is None:
        return text
    try:
        return adapter.validate_python(text)
    except ValidationError:
        return text


def _kinds(annotation: Any) -> frozenset[type]:
    """The kinds of TOML value a field of type `annotation` holds: bool, int, float, str,
    tuple (an array), dict (a table), object (another); None is left out."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _kinds(typing.get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return frozenset().union(*(_kinds(arg) for arg in typing.get_args(annotation)))
    if origin is Literal:
        return frozenset(type(arg) for arg in typing.get_args(annotation))
    if origin in (tuple, list):
        return frozenset({tuple})
    if annotation is type(None):
        return frozenset()
    if annotation in (bool, int, float, str):
        return frozenset({annotation})
    if isinstance(annotation, type) and issubclass(annotation, Path):
        return frozenset({str})
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return frozenset({dict})
    return frozenset({object})


def _array_item(annotation: Any) -> Any:
    """The item type of the tuple (or list) in `annotation`; object if there is none."""
    if typing.get_origin(annotation) in (tuple, list):
        return typing.get_args(annotation)[0]
    for arg in typing.get_args(annotation):
        item = _array_item(arg)
        if item is not object:
            return item
    return object


def env_overrides(env: Mapping[str, str], prefix: str) -> dict[tuple[str, ...], str]:
    """The key each `PREFIX__A__B` variable in `env` sets, ('a', 'b'), → the variable's name."""
    marker = prefix.upper() + "__"
    found: dict[tuple[str, ...], str] = {}
    for name in sorted(env):
        if not name.startswith(marker):
            continue
        keys = tuple(k.lower() for k in name[len(marker) :].split("__") if k)
        if keys:
            found[keys] = name
    return found


# EDGEFLIX_ variables that are not config overrides: read by the CLIs, the logger, the
# origin's runner. They never count as a misspelt override (see ignored_overrides).
NOT_OVERRIDES = frozenset(
    {
        "EDGEFLIX_FLEET",  # the manager's HTTP URL for `edgeflix fleet …` (fleet/cli.py)
        "EDGEFLIX_FLEET_CA",  # the CA an https:// manager is checked against (fleet/cli.py)
        "EDGEFLIX_FLEET_TOKEN",  # the manager's admin token (fleet/admin.py)
        "EDGEFLIX_FFMPEG",  # the ffmpeg binary (origin/runner.py)
        "EDGEFLIX_LOG_LEVEL",  # edgeflix/log.py
        "EDGEFLIX_LOG_JSON",  # edgeflix/log.py
    }
)


def ignored_overrides(
    names: Iterable[str], prefix: str, not_overrides: frozenset[str] = NOT_OVERRIDES
) -> list[str]:
    """The variables in `names` meant as `PREFIX__SECTION__KEY` overrides, by the look of
    them, that env_overrides ignores: the prefix in another case, followed by one `_` (or
    none), in the plural, or with no key after it. Other tools may set EDGEFLIX_ variables
    too, so the caller only warns."""
    exact = prefix.upper() + "__"
    ignored = []
    for name in sorted(names):
        if name in not_overrides:
            continue
        if name.startswith(exact):
            if not name[len(exact) :].strip("_"):  # `PREFIX__` alone sets nothing
                ignored.append(name)
            continue
        upper = name.upper()
        if not upper.startswith(prefix.upper()):
            continue
        rest = upper[len(prefix) :]
        if rest in ("", "S") or rest.startswith(("_", "S_")):
            ignored.append(name)
    return ignored


def apply_env_overrides(
    data: dict[str, Any], env: Mapping[str, str], prefix: str
) -> dict[str, Any]:
    """Return a copy of `data` with `PREFIX__A__B=value` overrides set at data[a][b]."""
    merged: dict[str, Any] = _deep_copy(data)
    for keys, name in env_overrides(env, prefix).items():
        node = merged
        for key in keys[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{name}: {'.'.join(keys)} is not inside a table")
            node = child
        node[keys[-1]] = parse_env_value(env[name])
    return merged


def _deep_copy(data: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in data.items()}


def describe_validation_error(
    source: str | None,
    err: ValidationError,
    overrides: Mapping[tuple[str, ...], str] | None = None,
    env: Mapping[str, str] | None = None,
) -> str:
    """One line naming where the first offending value came from and its key: the variable
    that set it (see env_overrides), else the file `source` (None: no file, defaults). `env`
    holds the variables' values, for a hint to quote one read as a number where a string
    is wanted."""
    first = err.errors()[0]
    loc = tuple(str(p).lower() for p in first["loc"])
    key = ".".join(str(p) for p in first["loc"]) or "(top level)"
    blamed = _blamed(loc, source, overrides or {})
    if first["type"] == "extra_forbidden":
        return f"{blamed}: unknown key '{key}'"
    if first["type"] == "missing":
        return f"{blamed}: missing key '{key}'"
    message = first["msg"].removeprefix("Value error, ")  # pydantic's wrapper for ValueError
    setter = (overrides or {}).get(loc)
    if first["type"] == "string_type" and setter is not None and env and setter in env:
        # The value was read as TOML (`1`, `true`, a date): in TOML a string is quoted.
        message += f" (quote it to keep it text: {setter}={quote_for_shell(env[setter])})"
    elif first["type"] in _NUMBER_TYPES and isinstance(first.get("input"), str):
        hint = _text_for_number(first["input"], first["type"], str(first["loc"][-1]), setter)
        message += hint
    elif first["type"] in _NUMBER_TYPES:
        message += _shown(first.get("input"), setter)  # `workers = true`
    elif first["type"] == "bool_type":
        message += f"{_shown(first.get('input'), setter)} (write true or false)"
    elif first["type"] == "array_type":
        message += _array_hint(first, key, setter)
    return f"{blamed}: key '{key}': {message}"


# Strict models' errors for text where a number is wanted (`workers = "4"`).
_NUMBER_TYPES = frozenset({"int_type", "float_type"})


def _text_for_number(text: str, error: str, name: str, setter: str | None) -> str:
    """What describe_validation_error adds when a number was given as text: the quotes to
    drop from a file's value that is one without them (`workers = "4"`)."""
    shown = _shown(text, setter)
    if setter is None and _reads_as(parse_env_value(text), error):
        return f"{shown} (write it without quotes: {name} = {text.strip()})"
    return shown


def _shown(value: object, setter: str | None) -> str:
    """`, not …` for a refused scalar: text from a file is "the string", as it was quoted;
    a variable's is not (`yes`, `4 s`)."""
    if isinstance(value, str):
        return f", not {value[:80]!r}" if setter else f", not the string {value[:80]!r}"
    if isinstance(value, int | float):  # a bool is an int: `true` shown as TOML has it
        return f", not {str(value).lower() if isinstance(value, bool) else value}"
    return ""


def _reads_as(value: object, error: str) -> bool:
    """Whether `value` is what a strict model's number `error` (int_type...) asked for."""
    if isinstance(value, bool):  # an int to Python, but `"true"` is no number unquoted
        return False
    if isinstance(value, int):
        return error in ("int_type", "float_type")
    return isinstance(value, float) and math.isfinite(value) and error == "float_type"


def _array_hint(error: Any, key: str, setter: str | None) -> str:
    """What describe_validation_error adds to toml_form's `array_type`: the value in an
    array, or the `[[…]]` header an array of tables is written with."""
    given, items = error.get("input"), error.get("ctx", {}).get("items")
    if isinstance(given, str) and items == "text":
        array = json.dumps([given])
        if setter is not None:
            return f", e.g. {setter}={shlex.quote(array)}"
        return f", e.g. {error['loc'][-1]} = {array}"
    in_tables = all(isinstance(part, str) for part in error["loc"])  # no array on the way
    if isinstance(given, dict) and items == "table" and setter is None and in_tables:
        return f" of tables: a [[{key}]] section for each, not [{key}]"
    return ""


def quote_for_shell(raw: str) -> str:
    """`raw` as a TOML string, quoted for a POSIX shell: 1 → '"1"'."""
    return shlex.quote(json.dumps(raw))


def _blamed(
    loc: tuple[str, ...], source: str | None, overrides: Mapping[tuple[str, ...], str]
) -> str:
    """The variable whose value is at `loc` or holds it; a check of a whole table (`loc` its
    key) names the file and the variables that set keys inside it."""
    holding = [keys for keys in overrides if loc[: len(keys)] == keys]
    if holding:
        return overrides[max(holding, key=len)]
    inside = [name for keys, name in overrides.items() if keys[: len(loc)] == loc]
    where = source or "defaults"
    return f"{where} with {', '.join(inside)}" if inside else where


def load_config(
    model: type[M],
    path: Path | None,
    *,
    env: Mapping[str, str] | None = None,
    env_prefix: str = "EDGEFLIX",
) -> M:
    """Read `path` (or nothing: all defaults), apply env overrides, validate into `model`."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such config file") from None
        except IsADirectoryError:
            raise ConfigError(f"{path}: is a folder, not a config file") from None
        except UnicodeDecodeError:  # a binary file given by mistake (a clip, a database)
            raise ConfigError(f"{path}: not a TOML config (not UTF-8 text)") from None
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    env = os.environ if env is None else env
    ignored = ignored_overrides(env, env_prefix)
    if ignored:
        event(
            log, "config.env_ignored", logging.WARNING, variables=" ".join(ignored),
            reason=f"not {env_prefix.upper()}__SECTION__KEY (that prefix in capitals, two "
            "underscores between the parts)",
        )  # fmt: skip
    data = apply_env_overrides(data, env, env_prefix)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        source = str(path) if path else None
        overrides = env_overrides(env, env_prefix)
        raise ConfigError(describe_validation_error(source, exc, overrides, env)) from None
