"""A source stream's language tag as manifests want it, pure: RFC 5646 (HLS LANGUAGE, DASH
@lang), whose registry has only the two-letter ISO 639-1 code of a language that has one —
"en", not the "eng" (or bibliographic "fre") that MP4 and Matroska store.
"""

from __future__ import annotations

import re

# ISO 639-2 codes (terminologic and bibliographic) of the languages with an ISO 639-1 code,
# each followed by that code: "aaraa" is aar → aa. From the iso-codes package's table.
_ISO_639_2_TO_1 = """
aaraa abkab afraf akaak albsq amham araar argan armhy asmas avaav aveae aymay azeaz
bakba bambm baqeu belbe benbn bihbh bisbi bodbo bosbs brebr bulbg burmy catca cescs
chach chece chizh chucu chvcv corkw cosco crecr cymcy czecs danda deude divdv dutnl
dzodz ellel engen epoeo estet euseu eweee faofo fasfa fijfj finfi frafr frefr fryfy
fulff geoka gerde glagd glega glggl glvgv greel grngn gujgu hatht hauha hebhe herhz
hinhi hmoho hrvhr hunhu hyehy iboig iceis idoio iiiii ikuiu ileie inaia indid ipkik
islis itait javjv jpnja kalkl kankn kasks katka kaukr kazkk khmkm kikki kinrw kirky
komkv konkg korko kuakj kurku laolo latla lavlv limli linln litlt ltzlb lublu luglg
macmk mahmh malml maomi marmr mayms mkdmk mlgmg mltmt monmn mrimi msams myamy nauna
navnv nblnr ndend ndong nepne nldnl nnonn nobnb norno nyany ocioc ojioj orior ormom
ossos panpa perfa plipi polpl porpt pusps quequ rohrm ronro rumro runrn rusru sagsg
sansa sinsi slksk slosk slvsl smese smosm snasn sndsd somso sotst spaes sqisq srdsc
srpsr sswss sunsu swasw swesv tahty tamta tattt telte tgktg tgltl thath tibbo tirti
tonto tsntn tsots tuktk turtr twitw uigug ukruk urdur uzbuz venve vievi volvo welcy
wlnwa wolwo xhoxh yidyi yoryo zhaza zhozh zulzu
"""
ISO_639_1 = {pair[:3]: pair[3:] for pair in _ISO_639_2_TO_1.split()}
# A primary language subtag, then optional subtags (region, script...): `en`, `fra`, `pt-BR`.
_TAG = re.compile(r"([A-Za-z]{2,3})((?:-[A-Za-z0-9]{1,8})*)")
UNDETERMINED = "und"


def language_tag(value: str | None) -> str | None:
    """The RFC 5646 tag for a stream's language metadata, or None when it states none
    (missing, "und") or is no language code at all (free text a tool wrote there)."""
    match = _TAG.fullmatch((value or "").strip())
    if match is None:
        return None
    primary = match.group(1).lower()
    if primary == UNDETERMINED:
        return None
    return ISO_639_1.get(primary, primary) + match.group(2)
