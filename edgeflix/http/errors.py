"""HTTP errors raised by the pure cores; the server shell turns each into its status code.

Every error names the status a peer should see, like h11's RemoteProtocolError hint.
"""

from __future__ import annotations

from edgeflix.errors import EdgeflixError


class HttpError(EdgeflixError):
    """A request we refuse; `status` is what the client gets, the message what we log."""

    def __init__(self, status: int, message: str, *, close: bool = False) -> None:
        super().__init__(message)
        self.status = status
        # A framing error leaves the byte stream unusable: answer, then close.
        self.close = close
        # Refused once its method was read as HEAD: the answer has no content (RFC 9110
        # §9.3.2), or a client that pipelined after it would read the text as a response.
        self.head = False


class BadRequest(HttpError):
    def __init__(self, message: str) -> None:
        super().__init__(400, message, close=True)


class HeadersTooLarge(HttpError):
    def __init__(self, message: str = "request header fields too large") -> None:
        super().__init__(431, message, close=True)
