"""plan_response: statuses, headers and byte spans for every Range/conditional combination."""

from __future__ import annotations

import time

from edgeflix.http.content import (
    cache_control,
    content_type,
    etag_for,
    http_date,
    parse_http_date,
)
from edgeflix.http.plan import FileMeta, ResponsePlan, plan_options, plan_response
from edgeflix.http.ranges import Span
from edgeflix.http.request import RequestHead

MTIME_NS = 1_700_000_000_123_456_789
MTIME_S = MTIME_NS // 1_000_000_000
META = FileMeta(1000, MTIME_NS, "v0/seg_0123456789_00001.m4s")
ETAG = etag_for(1000, MTIME_NS)


def req(method: str = "GET", **headers: str) -> RequestHead:
    hs = {k.replace("_", "-").lower(): v for k, v in headers.items()}
    return RequestHead(method, "/x", "/x", "", 1, hs, True)


def plan(method: str = "GET", **headers: str) -> ResponsePlan:
    return plan_response(META, req(method, **headers), "BOUNDARY")


def h(p: ResponsePlan, name: str) -> str | None:
    return dict(p.headers).get(name)


def test_whole_file() -> None:
    p = plan()
    assert p.status == 200
    assert p.body == (Span(0, 1000),)
    assert h(p, "Content-Length") == "1000"
    assert h(p, "ETag") == ETAG
    assert h(p, "Content-Type") == "video/iso.segment"
    assert h(p, "Cache-Control") == "public, max-age=31536000, immutable"
    assert h(p, "Last-Modified") == http_date(MTIME_S)
    assert h(p, "Access-Control-Allow-Origin") == "*"
    assert "Content-Range" in (h(p, "Access-Control-Expose-Headers") or "")


def test_head_has_headers_but_no_body() -> None:
    p = plan("HEAD")
    assert p.status == 200 and p.body == () and h(p, "Content-Length") == "1000"


def test_single_range() -> None:
    p = plan(range="bytes=-10")
    assert p.status == 206
    assert p.body == (Span(990, 10),)
    assert h(p, "Content-Range") == "bytes 990-999/1000"
    assert h(p, "Content-Length") == "10"


def test_multipart_ranges() -> None:
    p = plan(range="bytes=0-1,10-11")
    assert p.status == 206
    assert h(p, "Content-Type") == "multipart/byteranges; boundary=BOUNDARY"
    spans = [x for x in p.body if isinstance(x, Span)]
    assert spans == [Span(0, 2), Span(10, 2)]
    assert int(h(p, "Content-Length") or 0) == p.body_length
    text = b"".join(x for x in p.body if isinstance(x, bytes)).decode()
    assert "Content-Range: bytes 10-11/1000" in text and text.endswith("--BOUNDARY--\r\n")


def test_unsatisfiable() -> None:
    p = plan(range="bytes=5000-")
    assert p.status == 416 and h(p, "Content-Range") == "bytes */1000" and p.body == ()


def test_range_ignored_on_head() -> None:
    assert plan("HEAD", range="bytes=0-1").status == 200


def test_if_none_match_and_if_modified_since_give_304() -> None:
    assert plan(if_none_match=ETAG).status == 304
    assert plan(if_none_match=f'"nope", W/{ETAG}').status == 304  # weak comparison
    assert plan(if_none_match="*").status == 304
    assert plan(if_none_match='"nope"').status == 200
    # RFC 9110 5.6.1: empty list elements are ignored, not a malformed list.
    assert plan(if_none_match=f", {ETAG}").status == 304
    assert plan(if_none_match=f'"nope", ,{ETAG},').status == 304
    assert plan(if_modified_since=http_date(MTIME_S)).status == 304
    assert plan(if_modified_since=http_date(MTIME_S - 1)).status == 200
    # If-None-Match wins over If-Modified-Since (RFC 9110 §13.2.2 step 3 before 4).
    assert plan(if_none_match='"nope"', if_modified_since=http_date(MTIME_S)).status == 200
    assert plan(if_modified_since="garbage").status == 200
    p = plan(if_none_match=ETAG)
    assert h(p, "ETag") == ETAG and p.body == ()


def test_if_match_and_if_unmodified_since_give_412() -> None:
    assert plan(if_match='"other"').status == 412
    assert plan(if_match=f"W/{ETAG}").status == 412  # strong comparison
    assert plan(if_match=ETAG).status == 200
    assert plan(if_unmodified_since=http_date(MTIME_S - 10)).status == 412
    assert plan(if_unmodified_since=http_date(MTIME_S)).status == 200
    # If-Match is evaluated first and makes If-Unmodified-Since irrelevant.
    assert plan(if_match=ETAG, if_unmodified_since=http_date(0)).status == 200
    # 412 beats 304 (step 1 before step 3).
    assert plan(if_match='"other"', if_none_match=ETAG).status == 412


def test_if_range() -> None:
    assert plan(range="bytes=0-1", if_range=ETAG).status == 206
    assert plan(range="bytes=0-1", if_range='"stale"').status == 200
    assert plan(range="bytes=0-1", if_range=f"W/{ETAG}").status == 200
    assert plan(range="bytes=0-1", if_range=http_date(MTIME_S)).status == 206
    assert plan(range="bytes=0-1", if_range=http_date(MTIME_S - 1)).status == 200


def test_etag_changes_with_size_or_mtime() -> None:
    assert etag_for(1, 2) != etag_for(1, 3) != etag_for(2, 3)
    assert ETAG.startswith('"') and not ETAG.startswith("W/")


def test_only_content_named_files_are_immutable() -> None:
    # Names the origin makes from a digest of the bytes never change content; any other name
    # may, when a title is published again, so caches revalidate it after a short while.
    forever = "public, max-age=31536000, immutable"
    assert cache_control("h264_720p/init_0123456789.mp4") == forever
    assert cache_control("audio/seg_abcdef0123_00000.m4s") == forever
    assert cache_control("a/seg_abcdef0123_123456.m4s") == forever
    for changeable in (
        "v0/seg1.m4s",  # another packager's name
        "v0/init.mp4",
        "h264_720p/seg_00000.m4s",  # ffmpeg's scratch name
        "v/seg_ABCDEF0123_00000.m4s",  # not our hex
        "v/seg_abcdef012_00000.m4s",  # a tag too short
        "v/init_0123456789.mp4.part",
        "poster.jpg",
        "master.m3u8",
        "h264_720p/index.m3u8",
        "files.json",
    ):
        assert cache_control(changeable) == "public, max-age=30", changeable


def test_content_types() -> None:
    assert content_type("master.m3u8") == "application/vnd.apple.mpegurl"
    assert content_type("manifest.mpd") == "application/dash+xml"
    assert content_type("v/init.mp4") == "video/mp4"
    assert content_type("poster.jpg") == "image/jpeg"
    assert content_type("files.json") == "application/json"
    assert content_type("README") == "application/octet-stream"


def test_options_preflight() -> None:
    p = plan_options(
        req("OPTIONS", origin="https://player", access_control_request_method="GET",
            access_control_request_headers="range")
    )  # fmt: skip
    assert p.status == 204
    assert h(p, "Access-Control-Allow-Methods") == "GET, HEAD, OPTIONS"
    assert h(p, "Access-Control-Allow-Headers") == "range"
    assert h(p, "Access-Control-Allow-Origin") == "*"


def test_http_dates_in_all_three_formats() -> None:
    # RFC 9110 §5.6.7: a recipient MUST accept IMF-fixdate, RFC 850 and asctime.
    stamp = 784111777  # Sun, 06 Nov 1994 08:49:37 GMT
    assert parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT") == stamp
    assert parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT") == stamp
    assert parse_http_date("Sun Nov  6 08:49:37 1994") == stamp
    assert parse_http_date("Sun, 06 Nov 1994 08:49:37 -0000") is None  # zone unknown
    assert parse_http_date("Sun, 06 Nov 1994 08:49:37") is None
    assert parse_http_date("Sun Nov  6 08:49:37 99999") is None
    asctime = time.strftime("%a %b %e %H:%M:%S %Y", time.gmtime(MTIME_S))
    assert plan(if_modified_since=asctime).status == 304


def test_if_modified_since_later_than_the_server_clock_is_ignored() -> None:
    now = MTIME_S + 3600
    ahead = http_date(now + 86400)
    assert plan_response(META, req(if_modified_since=ahead), "B", now_s=now).status == 200
    behind = http_date(now - 60)
    assert plan_response(META, req(if_modified_since=behind), "B", now_s=now).status == 304
    # If-None-Match still decides on its own, whatever the dates.
    assert (
        plan_response(META, req(if_none_match=ETAG, if_modified_since=ahead), "B", now_s=now).status
        == 304
    )


def test_if_range_date_needs_a_strong_last_modified() -> None:
    # A file changed within the last second could change again in that same second: its
    # Last-Modified is weak and a matching date must not select a range (RFC 9110 §13.1.5).
    at = http_date(MTIME_S)
    fresh = plan_response(META, req(range="bytes=0-1", if_range=at), "B", now_s=MTIME_S + 0.5)
    assert fresh.status == 200
    old = plan_response(META, req(range="bytes=0-1", if_range=at), "B", now_s=MTIME_S + 5)
    assert old.status == 206


def test_no_content_length_on_204() -> None:
    # RFC 9110 §8.6: a server MUST NOT send Content-Length in a 204.
    for p in (
        plan_options(req("OPTIONS")),
        plan_options(req("OPTIONS", access_control_request_method="GET")),
    ):
        assert p.status == 204 and h(p, "Content-Length") is None and p.body == ()
