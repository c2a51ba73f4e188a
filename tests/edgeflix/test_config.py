from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import TypeAdapter, ValidationError

from edgeflix.config import ConfigModel, load_config
from edgeflix.configtypes import BaseUrl, HostPort, Name, parse_base_url, parse_hostport
from edgeflix.errors import ConfigError


class Serve(ConfigModel):
    listen: str = "127.0.0.1:8080"
    workers: int = 1


class Daemon(ConfigModel):
    serve: Serve = Serve()
    name: str = "box"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "d.toml"
    path.write_text(text)
    return path


def test_defaults_without_file() -> None:
    cfg = load_config(Daemon, None, env={})
    assert cfg.serve.workers == 1 and cfg.name == "box"


def test_file_values_and_frozen(tmp_path: Path) -> None:
    cfg = load_config(Daemon, write(tmp_path, "[serve]\nworkers = 4\n"), env={})
    assert cfg.serve.workers == 4
    with pytest.raises(ValidationError):
        cfg.serve.workers = 5  # type: ignore[misc]


def test_unknown_key_names_file_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, "[serve]\nwokers = 4\n")
    with pytest.raises(ConfigError) as err:
        load_config(Daemon, path, env={})
    assert str(path) in str(err.value) and "serve.wokers" in str(err.value)


def test_wrong_type_names_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"serve\.workers"):
        load_config(Daemon, write(tmp_path, '[serve]\nworkers = "many"\n'), env={})


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(Daemon, write(tmp_path, "[serve\n"), env={})
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(Daemon, tmp_path / "nope.toml", env={})


def test_a_folder_or_a_binary_file_is_named_as_such(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a folder, not a config file"):
        load_config(Daemon, tmp_path, env={})
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"\x00\x00\x00\x18ftypiso6\xe5\x00\xff")
    with pytest.raises(ConfigError, match=r"clip\.mp4: not a TOML config \(not UTF-8 text\)$"):
        load_config(Daemon, clip, env={})


def test_env_overrides_parse_toml_values(tmp_path: Path) -> None:
    env = {"EDGEFLIX__SERVE__WORKERS": "3", "EDGEFLIX__NAME": "edge one", "OTHER": "x"}
    cfg = load_config(Daemon, write(tmp_path, "[serve]\nworkers = 4\n"), env=env)
    assert cfg.serve.workers == 3 and cfg.name == "edge one"


def test_env_override_unknown_key_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"serve\.nope"):
        load_config(Daemon, None, env={"EDGEFLIX__SERVE__NOPE": "1"})


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:80", ("127.0.0.1", 80)), (":0", ("127.0.0.1", 0)), ("[::1]:9", ("::1", 9))],
)
def test_parse_hostport(text: str, expected: tuple[str, int]) -> None:
    assert parse_hostport(text) == expected


@pytest.mark.parametrize("text", ["localhost", "a:b", "h:70000", ""])
def test_parse_hostport_rejects(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_hostport(text)


class Listener(ConfigModel):
    listen: HostPort = "127.0.0.1:1"


def test_hostport_field_names_file_and_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"d\.toml: key 'listen': .*not HOST:PORT"):
        load_config(Listener, write(tmp_path, 'listen = "nowhere"\n'), env={})
    assert load_config(Listener, write(tmp_path, 'listen = "[::1]:80"\n'), env={}).listen


@pytest.mark.parametrize(
    ("text", "expected"),
    [("http://h1:8081/", "http://h1:8081"), ("https://[::1]", "https://[::1]")],
)
def test_parse_base_url(text: str, expected: str) -> None:
    assert parse_base_url(text) == expected


@pytest.mark.parametrize(
    "text", ["h1:8081", "http://", "http://h1:99999", "http://h1/titles", "ftp://h1", "http://h?x"]
)
def test_parse_base_url_rejects(text: str) -> None:
    with pytest.raises(ConfigError, match="not http"):
        parse_base_url(text)


class Public(ConfigModel):
    public_url: BaseUrl | None = None


def test_base_url_field_names_file_and_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"d\.toml: key 'public_url': .*not http"):
        load_config(Public, write(tmp_path, 'public_url = "10.0.0.5:8081"\n'), env={})
    cfg = load_config(Public, write(tmp_path, 'public_url = "http://10.0.0.5:8081/"\n'), env={})
    assert cfg.public_url == "http://10.0.0.5:8081"


@pytest.mark.parametrize("bad", ["my box", "", "-x", "a/b", "é", "x" * 65, "a\nb"])
def test_names_are_one_safe_token(bad: str) -> None:
    with pytest.raises(ValidationError, match="1-64 letters"):
        TypeAdapter(Name).validate_python(bad)
    assert TypeAdapter(Name).validate_python("home-1.lab_2") == "home-1.lab_2"
