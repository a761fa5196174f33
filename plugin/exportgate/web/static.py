"""Static mode: the gate serving a mirror directory itself (``exportgate serve --mode static --root DIR``).

``StaticApp(admission, root="/srv/mirror", operator=…)`` decides every gated request first (451 page on a block),
and only then opens the file at ``root`` + the normalised path: what was decided is exactly what is served.
``Range`` (206, 416), ``If-None-Match``/``If-Modified-Since`` (304), ``If-Match`` (412), ``If-Range`` and ``HEAD``
are answered in the order RFC 9110 evaluates them (:mod:`exportgate.web.preconditions`): preconditions before
``Range``, a 412 without the file as its body, a range in a unit other than bytes, several ranges or a malformed one
served as the whole file; gated answers carry the decision headers and ``Cache-Control: no-store`` (a cache must not
replay one client's allowed download to a blocked one). A whole file goes out through the server's ``sendfile``; a
file truncated in place while it is sent (a range too) ends its response with an error, so the server aborts the
connection: the client sees a body shorter than its Content-Length at once, not after the keep-alive timeout.
Mirror syncs that write a new file and rename it over the old one (rsync without ``--inplace``) never do that.

The decision is about the file that will be served: a path ending in ``/`` serves that directory's
``index.html`` and is decided as ``…/index.html``; a symlink inside root (``latest.tar.gz -> crypto-2.0.tar.gz``)
is decided as its target, which is also what ``gated`` is matched against. A directory named without the ``/``
is redirected to it (as nginx does); no directory listings. Only regular files are served.

Containment: the path is resolved (symlinks included) and must stay inside ``root``; a symlink to anything
outside it is a 404, as is a file that is not regular (a FIFO, a device). The file is opened without following a
final symlink and checked through ``/proc/self/fd`` once open: a path component swapped for a link between the
decision and the open is a 404, not a different file. Hidden files are served like any other: keep what must not
be public out of root. When a symlink's target is decided, the record's ``path`` and ``raw_path`` are that target's,
and its ``requested_path`` the path asked for.

Caveat: ``Content-Type`` comes from the file name (``mimetypes``); compressed archives are sent as what they are
(``application/gzip`` for ``.tar.gz``), never with ``Content-Encoding``, which would make clients unpack them.
"""

from __future__ import annotations

import errno
import logging
import mimetypes
import os
import stat
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import quote

from werkzeug.wrappers import Response
from werkzeug.wsgi import wrap_file

from ..errors import ResponseCutShort
from .forwardauth import Admission, StartResponse, plain, reject_path
from .middleware import _raw_uri, compile_gated
from .mirrorfiles import checked_root, served_file, served_uri
from .page import Operator, decision_headers
from .paths import PATH_SAFE, NormalisedPath, PathRejected, normalise_path
from .preconditions import FileValidators, evaluate

_CHUNK = 64 * 1024
log = logging.getLogger("exportgate.web")
_ENCODED_TYPES = {"gzip": "application/gzip", "bzip2": "application/x-bzip2", "xz": "application/x-xz",
                  "compress": "application/x-compress", "br": "application/x-brotli"}
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
_PROC_FD = "/proc/self/fd"


class StaticApp:
    """WSGI app serving regular files under ``root``, decided first."""

    def __init__(self, admission: Admission, *, root: str, operator: Operator, gated: Iterable[str] = ()) -> None:
        checked_root(root)
        self.admission = admission
        self.operator = operator
        self.configured_root = root
        self.gated = compile_gated(gated, case_insensitive=admission.case_insensitive)
        self._proc = os.path.isdir(_PROC_FD)

    @property
    def root(self) -> str:
        """The real path of the root now: a mirror that switches a ``current`` symlink to a new release is served
        (and decided, and explained) from the new one at once, as nginx would, not from the one found at start.
        A root that is gone resolves to a path that does not exist, and every file in it is a 404."""
        return os.path.realpath(self.configured_root)

    def origin_check(self) -> dict[str, Any]:
        """For ``/readyz``: whether the root is a directory now (a mirror volume unmounted or moved away makes
        every download a 404)."""
        if os.path.isdir(self.root):
            return {"ok": True, "root": self.configured_root}
        return {"ok": False, "root": self.configured_root, "error": "not a directory now"}

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        if method not in ("GET", "HEAD"):
            return plain(start_response, "405 Method Not Allowed", "only GET and HEAD",
                         [("Allow", "GET, HEAD")])
        raw_uri = _raw_uri(environ)
        try:
            normalised: NormalisedPath | None = normalise_path(raw_uri)
        except PathRejected as exc:
            return reject_path(start_response, exc, self.admission.metrics)
        assert normalised is not None
        path = normalised.path
        query = raw_uri.partition("#")[0].partition("?")[2]
        # The file served for a directory URL is its index.html; the file served for a symlink is its target
        # (``latest.tar.gz -> crypto-2.0.tar.gz``). Either way the decision is about the file that will be
        # served. Resolving only looks at names (lstat); nothing is opened before the decision.
        target, real, decide_on = served_file(self.root, path)  # the root as it is now (see root)
        requested = None
        if decide_on != path:
            raw_uri = served_uri(decide_on) + (f"?{query}" if query else "")
            normalised = None  # decided on the file served: admit() normalises the rewritten target
            requested = path  # and the record says what was asked for
        decision = None
        if self.gated is None or self.gated.match(target) or self.gated.match(decide_on):
            decision, refusal = self.admission.admit_download(environ, start_response, raw_uri, normalised,
                                                              self.operator, requested=requested)
            if refusal is not None:
                return refusal
        extra = decision_headers(decision) if decision is not None else []
        # Only now, with the decision recorded, is the file opened.
        # A directory where a file was asked for is redirected to its URL with a slash; where the slash was already
        # there (its index.html is a directory), it is no file at all, and redirecting again would loop.
        found = self.open(real, directory_ok=not path.endswith("/")) if real is not None else None
        if found is None:
            return plain(start_response, "404 Not Found", "not found", extra)
        if found == "directory":
            location = quote((path + "/").encode("utf-8"), safe=PATH_SAFE) + (f"?{query}" if query else "")
            return plain(start_response, "301 Moved Permanently", "a directory", [("Location", location), *extra])
        return self.send(environ, start_response, found, decide_on, extra)


    def open(self, real: str, *, directory_ok: bool) -> Any:
        """The regular file at ``real`` opened, ``"directory"``, or ``None`` (not a file, or swapped since)."""
        try:
            info = os.stat(real)
        except (OSError, ValueError) as exc:
            _say_unreadable(real, exc)
            return None
        if stat.S_ISDIR(info.st_mode):
            return "directory" if directory_ok else None
        if not stat.S_ISREG(info.st_mode):
            return None  # FIFOs would block, devices never end
        try:
            fd = os.open(real, _OPEN_FLAGS)
        except OSError as exc:
            _say_unreadable(real, exc)
            return None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError("not a regular file")
            # What was opened is what was decided: a path component swapped for a symlink since resolve()
            # would show here as a different real path.
            if self._proc and os.readlink(f"{_PROC_FD}/{fd}") != real:
                raise OSError("changed since it was decided")
            os.set_blocking(fd, True)
            return os.fdopen(fd, "rb")
        except OSError:
            os.close(fd)
            return None


    def send(self, environ: dict[str, Any], start_response: StartResponse, file: Any, target: str,
             extra: list[tuple[str, str]]) -> Iterable[bytes]:
        info = os.fstat(file.fileno())
        validators = FileValidators(etag=f"{info.st_mtime_ns:x}-{info.st_size:x}-{info.st_ino:x}",
                                    mtime=int(info.st_mtime), size=info.st_size)
        method = environ.get("REQUEST_METHOD", "GET")
        headers = {name: environ[key] for name, key in _CONDITIONAL.items() if key in environ}
        answer = evaluate(headers, method, validators)
        response = Response(status=answer.status)
        if answer.status == 200:
            # The server's sendfile where it has one; checked at the end for a file cut short meanwhile.
            response.response = wrap_file(environ, _WholeFile(file, info.st_size))
            response.content_length = info.st_size
        elif answer.status == 206:
            response.response = _part(file, answer.start, answer.length)
            response.content_length = answer.length
            last = answer.start + answer.length - 1
            response.headers["Content-Range"] = f"bytes {answer.start}-{last}/{info.st_size}"
        else:
            file.close()
            response.response = []
            if answer.status == 416:
                response.headers["Content-Range"] = f"bytes */{info.st_size}"
        response.direct_passthrough = True
        if answer.status in (200, 206):
            response.headers["Content-Type"] = content_type(target)
            response.headers["Accept-Ranges"] = "bytes"
        if answer.status in (200, 206, 304):  # a 304 names the version the client has, without a body's headers
            response.last_modified = info.st_mtime  # type: ignore[assignment]
            response.set_etag(validators.etag)
            response.cache_control.no_cache = True  # ungated files: cacheable, revalidated (gated: no-store below)
        for name, value in extra:
            response.headers[name] = value  # Cache-Control: no-store, the decision headers
        return response(environ, start_response)


def _say_unreadable(path: str, exc: BaseException) -> None:
    """A file that is there but cannot be read (permissions, I/O) is a 404 to the client, and the operator's to
    mend: logged. Files that are simply gone (or changed since the decision) are not."""
    if not (isinstance(exc, OSError) and exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP)):
        log.warning("static root: %s cannot be read (%s): answered 404", path, exc)


_CONDITIONAL = {name: "HTTP_" + name.upper().replace("-", "_") for name in (
    "if-match", "if-none-match", "if-modified-since", "if-unmodified-since", "if-range", "range")}


def _part(file: Any, start: int, length: int) -> Iterator[bytes]:
    """``length`` bytes of ``file`` from ``start``, read by seeking (a large file's last bytes cost only those); a
    file cut shorter since it was opened ends the response early with an error, so the server aborts the
    connection instead of leaving the client waiting for the rest."""
    try:
        file.seek(start)
        left = length
        while left:
            chunk = file.read(min(left, _CHUNK))
            if not chunk:
                raise _cut_short(file, f"{left} of {length} bytes not sent")
            left -= len(chunk)
            yield chunk
    finally:
        file.close()


class _WholeFile:
    """A file sent whole, as the server's ``wsgi.file_wrapper`` takes it, that raises from ``close()`` if the file
    is shorter than its announced length by then.

    gunicorn sends it with sendfile, which stops quietly at a truncated file's new end: the response looks finished
    to the server, and the client, owed the rest of ``Content-Length``, waits on a kept-alive connection until the
    keep-alive timeout. An error out of the response's ``close()`` makes the server abort the connection instead
    (as :func:`_part` does for a range, which the gate reads itself)."""

    __slots__ = ("_file", "_length")

    def __init__(self, file: Any, length: int) -> None:
        self._file = file
        self._length = length

    def fileno(self) -> int:
        return int(self._file.fileno())

    def read(self, size: int = -1) -> bytes:
        return bytes(self._file.read(size))

    def seek(self, offset: int, whence: int = 0) -> int:
        return int(self._file.seek(offset, whence))

    def tell(self) -> int:
        return int(self._file.tell())

    def close(self) -> None:
        try:
            now = os.fstat(self._file.fileno()).st_size
            if now < self._length:
                raise _cut_short(self._file, f"{now} of {self._length} bytes left")
        finally:
            self._file.close()


def _cut_short(file: Any, how: str) -> ResponseCutShort:
    try:
        name = os.readlink(f"{_PROC_FD}/{file.fileno()}")
    except (OSError, ValueError):
        name = "a file"
    problem = ResponseCutShort(f"{name} is shorter than when it was opened ({how}): the response is cut short")
    log.error("static root: %s", problem)
    return problem


def content_type(path: str) -> str:
    """Media type from the file name; a compressed file is its compression format, never Content-Encoding."""
    mimetype, encoding = mimetypes.guess_type(path, strict=False)
    if encoding is not None:
        return _ENCODED_TYPES.get(encoding, "application/octet-stream")
    return mimetype or "application/octet-stream"
