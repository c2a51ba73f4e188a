from __future__ import annotations

import pytest

from origin.languages import ISO_639_1, language_tag


@pytest.mark.parametrize(
    ("stated", "tag"),
    [
        ("eng", "en"),  # MP4's ISO 639-2/T
        ("fre", "fr"),  # Matroska's 639-2/B
        ("fra", "fr"),
        ("ger", "de"),
        ("ENG", "en"),
        ("en", "en"),
        ("haw", "haw"),  # no two-letter code: the three letters are the tag
        ("pt-BR", "pt-BR"),  # Matroska's BCP 47 element
        ("por-BR", "pt-BR"),
        ("und", None),
        ("", None),
        (None, None),
        ("English", None),  # free text, not a code
        ('en",X="1', None),  # nothing that could break a manifest's attribute
    ],
)
def test_language_tag(stated: str | None, tag: str | None) -> None:
    assert language_tag(stated) == tag


def test_table_maps_three_letters_to_two() -> None:
    assert len(ISO_639_1) == 204  # 184 languages, 20 with a bibliographic code too
    assert all(len(k) == 3 and len(v) == 2 for k, v in ISO_639_1.items())
