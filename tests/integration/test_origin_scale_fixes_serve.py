"""A real `origin serve` and `origin ls` on a store of long titles: the listing is what a
full read of each files.json gives, and a server whose first read of the catalogue is slow
(here: held on a files.json that is a FIFO, for as long as the test likes) already answers
segments, and `GET /titles` 503 with Retry-After until the read is done."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import httpx

from edgeflix import titlefiles
from tests.conftest import run_cli
from tests.integration.serve_support import serving_origin
from tests.origin.test_origin_scale_fixes_store import broken_titles, expected, long_title


def test_ls_and_the_served_listing_are_the_full_reads(tmp_path: Path) -> None:
    store = tmp_path / "store"
    good = [long_title(store / "titles" / f"t{n}", f"t{n}", 150) for n in range(3)]
    broken_titles(store / "titles", good[0])
    want = [expected(f) for f in good]
    out = run_cli(["origin", "ls", "--store", str(store), "--json"], check=True, timeout=120)
    assert json.loads(out.stdout) == want
    with serving_origin(store) as server, httpx.Client(base_url=server.url) as client:
        served = client.get("/titles").json()["titles"]
        assert [{k: t[k] for k in want[0]} for t in served] == want


def test_segments_answer_while_the_catalogue_is_first_read(tmp_path: Path) -> None:
    store = tmp_path / "store"
    long_title(store / "titles" / "a-bunny", "a-bunny", 100)
    held = long_title(tmp_path / "later", "z-held", 100)
    raw = (held / titlefiles.FILES_JSON).read_bytes()
    (held / titlefiles.FILES_JSON).unlink()
    os.mkfifo(held / titlefiles.FILES_JSON)  # its read waits until the test writes it
    held.rename(store / "titles" / "z-held")
    fifo = store / "titles" / "z-held" / titlefiles.FILES_JSON

    with serving_origin(store) as server, httpx.Client(base_url=server.url) as client:
        segment = client.get("/titles/a-bunny/v1/seg_0a1b2c3d4e5f_00042.m4s")
        assert segment.status_code == 200 and segment.content == b"42"
        waiting = client.get("/titles")
        assert waiting.status_code == 503 and waiting.headers["retry-after"] == "1"
        assert client.head("/titles").status_code == 503

        with fifo.open("wb") as pipe:  # the read goes on
            pipe.write(raw)
        deadline = time.monotonic() + 30
        while (listing := client.get("/titles")).status_code == 503:
            assert time.monotonic() < deadline, "the first read never ended"
            time.sleep(0.05)
        assert listing.status_code == 200
        titles = listing.json()["titles"]
        assert [t["id"] for t in titles] == ["a-bunny", "z-held"]
        assert titles[1]["digest"] == titlefiles.digest_bytes(raw)
