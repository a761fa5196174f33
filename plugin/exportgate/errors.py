"""The one exception root of exportgate and the errors that carry their fields.

Every error a user can cause (a bad config, a broken pack, an unreadable database, a store that
cannot write) is an :class:`ExportGateError`. Messages name what is wrong and where: a file and a
line when the fault is in a file a person wrote.
"""

from __future__ import annotations


class ExportGateError(Exception):
    """Root of every error exportgate raises on purpose."""


class ConfigError(ExportGateError):
    """A config file, policy pack, manifest or authorization file is not valid.

    ``file`` and ``line`` point at the fault when known; ``str(err)`` reads ``file:line: message``
    so editors and CI logs can jump to it.
    """

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None) -> None:
        self.message = message
        self.file = file
        self.line = line
        super().__init__(self.__str__())

    def __str__(self) -> str:
        if self.file and self.line:
            return f"{self.file}:{self.line}: {self.message}"
        if self.file:
            return f"{self.file}: {self.message}"
        return self.message


class ConfigErrors(ExportGateError):
    """Several :class:`ConfigError` found in one pass, so a user fixes them all at once."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(str(e) for e in self.errors))


class GeolocationFailed(ExportGateError):
    """The geolocation data could not be read for a client (a database file corrupt, or written over while in
    use): the gate cannot say where the client is, and does not decide rather than apply the pack's rule for
    locations that are merely unknown."""


class AddressError(ExportGateError, ValueError):
    """A client address could not be parsed as a bare IPv4 or IPv6 address."""

    def __init__(self, text: str, reason: str) -> None:
        self.text = text
        self.reason = reason
        shown = text if len(text) <= 64 else text[:61] + "..."
        super().__init__(f"unparseable address {shown!r}: {reason}")


class GeoDatabaseError(ExportGateError):
    """A geolocation database is missing, truncated, corrupt or of the wrong type."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class NoPackInForce(ExportGateError):
    """No policy pack is in force at the requested time: the gate cannot decide, so it refuses."""

    def __init__(self, at: object) -> None:
        self.at = at
        super().__init__(f"no policy pack is in force at {at}")


class RecordStoreError(ExportGateError):
    """The decision record could not be committed; the download must not be served."""


class ResponseCutShort(ExportGateError):
    """A download whose body cannot be completed (the upstream stopped, the file was cut short): raised out of the
    response's body so the server aborts the connection, never ending a short body that would look complete. The
    gate logs why itself."""
