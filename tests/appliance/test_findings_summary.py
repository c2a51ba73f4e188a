"""The CLI's and the log's summaries of storage findings: a line per title, disk and kind of
problem, however many files it happened to."""

from __future__ import annotations

from appliance.findings import Finding, grouped, summary_line


def test_a_thousand_missing_files_are_one_line_naming_the_first_few() -> None:
    lost = [Finding("movie", f"v/seg_{i:05d}.m4s", "missing", damage=True) for i in range(1000)]
    other = [Finding("movie", "v/init.mp4", "size 3 != 9", damage=True)]
    lines = [summary_line(g) for g in grouped([*lost, *other])]
    assert lines == [
        "movie: missing (1000 files: v/seg_00000.m4s, v/seg_00001.m4s, v/seg_00002.m4s "
        "and 997 more)",
        "movie/v/init.mp4: size 3 != 9",
    ]


def test_sizes_that_differ_only_in_numbers_are_one_kind_and_titles_stay_apart() -> None:
    findings = [
        Finding("a", "x", "size 3 != 9", damage=True),
        Finding("a", "y", "size 5 != 7", damage=True),
        Finding("b", "x", "size 3 != 9", damage=True),
        Finding("", "", "disk /srv/d1 is not in [storage] disks", disk="/srv/d1"),
    ]
    groups = grouped(findings)
    assert [(g.title, g.paths) for g in groups] == [("a", ["x", "y"]), ("b", ["x"]), ("", [])]
    assert summary_line(groups[2]) == "disk /srv/d1 is not in [storage] disks"
