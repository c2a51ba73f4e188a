"""Sources as the fill shows them. A site peer's source is `PEER/t/<token>`
(appliance/fleetlink_keys.py sign_peer_sources): a token any client address may use, on
every appliance of the fleet (they share the keys), until it expires. It goes in requests
only; status, state.json, log events, error details and the validators beside `.part`
files name the source through `redact`.
"""

from __future__ import annotations

import re

REDACTED = "<redacted>"
_SEGMENT = r"[A-Za-z0-9._~%+=-]+"  # the token's alphabet (url-safe base64, dots), %-encoded
# A segment after `/t/` is a token when it sits where appliance URLs put one (before
# `/titles/`, or at the end of the URL or of the word: a `:` or quote after a URL in a
# message is kept), or when it reads like one wherever it is (edgeflix/tokens.py:
# `<key id>.<expiry>.<scope>.<mac>[.<client mac>]`). The folder of a title named "t"
# (`/titles/t/v0/seg.m4s`) holds no token, and stays.
_PATH_TOKEN = re.compile(
    rf"(?<=/t/)(?<!/titles/t/)(?:{_SEGMENT}(?=/titles/|[^A-Za-z0-9._~%+=/-]|/?\Z)"
    r"|[A-Za-z0-9_-]+\.[0-9]+\.[a-z]+\.[A-Za-z0-9_.-]+)"
)


def redact(text: str) -> str:
    """`text` (a URL, or a message naming URLs) with every path token replaced by
    `<redacted>`; unchanged when it holds none. Idempotent."""
    return _PATH_TOKEN.sub(REDACTED, text)
