"""Bad input and interrupted ingests: one line and a non-zero exit, never a half title."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import imageio_ffmpeg
import psutil
import pytest

from tests.conftest import run_cli


def ingest_args(src: Path, store: Path, title_id: str = "t", *extra: str) -> list[str]:
    return ["origin", "ingest", str(src), "--id", title_id, "--title", "T",
            "--store", str(store), "--segment-seconds", "2", *extra]  # fmt: skip


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *words: str) -> None:
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if "level=" not in ln and ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for word in words:
        assert word in lines[0], lines[0]


def skip_without_mount_namespaces() -> None:
    """The tests that need a small or read-only file system mount one as root of a user
    namespace (no privileges, nothing outside the test changes)."""
    if (
        not shutil.which("unshare")
        or subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode
    ):
        pytest.skip("needs unprivileged user+mount namespaces")


def no_title(store: Path, title_id: str = "t") -> bool:
    return not (store / "titles" / title_id).exists()


def test_missing_file(tmp_path: Path) -> None:
    proc = run_cli(ingest_args(tmp_path / "nope.mp4", tmp_path / "store"))
    assert_one_line_error(proc, "no such file")


def test_not_a_video(tmp_path: Path) -> None:
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 100)
    assert_one_line_error(run_cli(ingest_args(text, tmp_path / "s")), "not a video")
    assert no_title(tmp_path / "s")


def test_audio_only_container(tmp_path: Path, bunny: Path) -> None:
    audio = tmp_path / "audio.m4a"
    subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-i", str(bunny), "-vn",
         "-c:a", "copy", str(audio)],
        check=True, timeout=60,
    )  # fmt: skip
    assert_one_line_error(run_cli(ingest_args(audio, tmp_path / "s")), "no video stream")


@pytest.mark.parametrize("bad_id", ["a/b", "..", "../etc", "x..y", "", "-x", "nl\n"])
def test_bad_title_ids(tmp_path: Path, bikes: Path, bad_id: str) -> None:
    assert_one_line_error(run_cli(ingest_args(bikes, tmp_path, bad_id)), "invalid title id")
    assert not (tmp_path / "titles").exists() or not any((tmp_path / "titles").iterdir())


def test_a_codec_named_twice(tmp_path: Path, bikes: Path) -> None:
    args = [*ingest_args(bikes, tmp_path), "--codecs", "h264,h264"]
    assert_one_line_error(run_cli(args), "names a codec twice")


def test_store_is_a_file(tmp_path: Path, bikes: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_one_line_error(run_cli(ingest_args(bikes, blocker / "store")), "not a directory")


@pytest.mark.parametrize("command", [["ls"], ["serve", "--listen", "127.0.0.1:0"]])
def test_listing_or_serving_a_store_that_is_a_file(tmp_path: Path, command: list[str]) -> None:
    (tmp_path / "store").write_text("not a store")
    (tmp_path / "other" / "titles").parent.mkdir()
    (tmp_path / "other" / "titles").write_text("not a folder")
    for store, words in (("store", "is not a folder"), ("other", "titles is not a folder")):
        proc = run_cli(["origin", *command, "--store", str(tmp_path / store)], timeout=30)
        assert_one_line_error(proc, words)


def test_store_not_writable(tmp_path: Path, bikes: Path) -> None:
    store = tmp_path / "ro"
    store.mkdir()
    store.chmod(0o555)
    tmp_path.chmod(0o755)
    args = [sys.executable, "-m", "edgeflix.cli", *ingest_args(bikes, store)]
    if os.geteuid() == 0:
        # root ignores permission bits: run the CLI as nobody, as an operator's service would.
        if not shutil.which("setpriv"):
            pytest.skip("needs setpriv to drop root")
        args = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *args]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd="/")
    assert_one_line_error(proc, "not writable")


def test_full_disk(tmp_path: Path, bunny: Path) -> None:
    """A 600 KiB tmpfs as the store (in a user namespace): ffmpeg hits ENOSPC mid-encode."""
    skip_without_mount_namespaces()
    store = tmp_path / "small"
    store.mkdir()
    cli = " ".join([sys.executable, "-m", "edgeflix.cli", *ingest_args(bunny, store)])
    script = (
        f"mount -t tmpfs -o size=600k tmpfs {store} || exit 99; {cli}; echo rc=$? >&2; "
        f"ls -A {store} {store}/titles >&2"
    )
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True,
                          text=True, timeout=180)  # fmt: skip
    assert "rc=99" not in proc.stderr
    assert "rc=1" in proc.stderr and "disk full" in proc.stderr, proc.stderr
    assert ".tmp-" not in proc.stderr  # the temp folder went with the error
    assert "Traceback" not in proc.stderr


def start_slow_ingest(src: Path, store: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "EDGEFLIX_ORIGIN__ENCODE__PRESET": "slower"}
    # A job started in the background by a non-interactive shell inherits SIGINT ignored;
    # the user pressing Ctrl-C at a terminal has it at its default, so the child gets that.
    return subprocess.Popen(
        [sys.executable, "-m", "edgeflix.cli", *ingest_args(src, store)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip


def wait_for_segments(store: Path, proc: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if list(store.glob(".tmp-*/title/*/seg_*.m4s")):
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("the ingest wrote no segment in time")


def ffmpeg_children(pid: int) -> list[psutil.Process]:
    return [c for c in psutil.Process(pid).children(recursive=True) if "ffmpeg" in c.name()]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_mid_encode_leaves_nothing(tmp_path: Path, bunny: Path, sig: int) -> None:
    proc = start_slow_ingest(bunny, tmp_path)
    try:
        wait_for_segments(tmp_path, proc)
        children = ffmpeg_children(proc.pid)
        assert children
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130
    assert "nothing was published" in err and "Traceback" not in err
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive
    assert sorted(p.name for p in tmp_path.iterdir()) == ["titles"]
    assert no_title(tmp_path)


def test_sigkill_mid_encode_then_next_run_cleans(tmp_path: Path, bunny: Path, bikes: Path) -> None:
    proc = start_slow_ingest(bunny, tmp_path)
    try:
        wait_for_segments(tmp_path, proc)
        children = ffmpeg_children(proc.pid)
        proc.kill()
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive  # ffmpeg dies with its parent
    assert no_title(tmp_path)
    assert list(tmp_path.glob(".tmp-t-*"))  # the half-built title is where no reader looks
    run_cli(ingest_args(bikes, tmp_path, "other", "--heights", "240"), check=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["titles"]
    assert sorted(p.name for p in (tmp_path / "titles").iterdir()) == ["other"]
