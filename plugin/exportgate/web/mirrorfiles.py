"""Which file a mirror directory serves for a request path: a directory's ``index.html``, a symlink's target.

Static mode serves that file and decides on it; forward-auth mode with ``serve.root`` (the directory the front end
serves, on the gate's host) decides on it too, since the front end will open the link's target; ``exportgate
explain``/``classify`` answer for it. Only names are looked at (``lstat``, ``realpath``); nothing is opened.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from urllib.parse import quote

from ..errors import ConfigError
from .paths import PATH_SAFE

INDEX = "index.html"


def checked_root(root: str) -> str:
    """The real path of ``root``, once it is a directory to serve; ConfigError otherwise."""
    real = os.path.realpath(root)
    if not os.path.isdir(real):
        raise ConfigError(f"serve.root {root!r} is not a directory")
    return real


def served_file(root: str, path: str) -> tuple[str, str | None, str]:
    """What static mode serves for the normalised request ``path`` under the real directory ``root``:
    ``(target, real, decide_on)``. ``target`` is the file named (``…/index.html`` for a path ending in ``/``),
    ``real`` its real path with symlinks resolved (``None``: missing, or outside root), ``decide_on`` the path
    under root of the file that will be served, which is what the gate decides on (``target`` if it is missing).
    ``exportgate explain`` and ``classify`` ask this too, so they answer for what static mode serves. Only names
    are looked at (lstat); nothing is opened."""
    target = path + INDEX if path.endswith("/") else path
    try:
        real: str | None = os.path.realpath(os.path.join(root, target.lstrip("/")), strict=True)
    except (OSError, ValueError):
        real = None
    if real is not None and not _inside(root, real):
        real = None
    served = (real[len(root):] or "/") if real is not None and root != os.sep else real
    return target, real, served or target


def served_uri(path: str) -> str:
    """``path`` (from :func:`served_file`) as a request target. fsencode: a link target that is not UTF-8 stays
    its bytes, and normalise_path then refuses it."""
    return quote(os.fsencode(path), safe=PATH_SAFE)


def _inside(root: str, real: str) -> bool:
    return real == root or real.startswith(root + os.sep) or (root == os.sep and real.startswith(os.sep))


def unseen(root: str, target: str, real: str | None) -> str | None:
    """Why the gate cannot tell which file ``target`` (with ``real``, from :func:`served_file`) names under
    ``root``, or ``None`` when it can (``real``), or when nothing is there (the front end answers 404). A front end
    follows a symlink, or a path through one, out of the root or to nothing; and one running as another user reads
    a directory the gate may not (EACCES: the name alone would be decided, and the link's target served)."""
    if real is not None:
        return None
    name = os.path.join(root, target.lstrip("/"))
    try:
        os.stat(name)
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
            return f"a path the gate cannot read ({exc.strerror})"
        # Nothing there for the gate; but a link anywhere on the way (a directory link to /proc/self/cwd, into a
        # PrivateTmp, into another mount namespace) may lead the front end, another process, to a file.
        if os.path.realpath(name) != os.path.normpath(name):
            return "a symlink to nothing"
        return None
    except ValueError:  # a NUL: no such file
        return None
    return "a symlink out of the mirror's root"


@dataclass(frozen=True, slots=True)
class LinkedFile:
    """What a front end or upstream serving ``root`` opens for a request path (forward-auth and proxy modes with
    ``serve.root``; static mode serves the file itself: :func:`served_file`)."""

    named: str
    """The file the path names (``…/index.html`` for a directory)."""
    decide_on: str | None
    """The file under root a symlink on the way leads to, which the gate decides on; ``None``: no link on the way
    (the path is decided as asked)."""
    refused: str | None
    """Why the gate cannot tell where the path leads (:func:`unseen`): refused, undecided."""


def linked_file(root: str, path: str) -> LinkedFile:
    """:class:`LinkedFile` for the normalised ``path`` under the real directory ``root``."""
    named, real, served = served_file(root, path)
    refused = unseen(root, named, real)
    if refused is not None:
        return LinkedFile(named, None, refused)
    return LinkedFile(named, served if served != named else None, None)


__all__ = ["INDEX", "LinkedFile", "checked_root", "linked_file", "served_file", "served_uri", "unseen"]
