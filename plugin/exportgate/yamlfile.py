"""Read the YAML files people write (config, policy packs, manifests) keeping line numbers.

Every mapping and list comes back as a ``dict``/``list`` subclass that remembers the line of
each key and item, so validation can say ``file:line: message``. Duplicate keys are an error:
plain ``yaml.safe_load`` keeps the last one silently, which in a policy pack can turn a block
into an allow without anyone noticing.
"""

from __future__ import annotations

import datetime as dt
import difflib
import os
import stat
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError


class Mapping(dict):  # type: ignore[type-arg]
    """A YAML mapping with ``line`` (its own line) and ``key_lines`` (line of each key)."""

    line: int = 0
    file: str = ""
    key_lines: dict[Any, int]
    key_sources: dict[Any, str]
    """Keys whose value came from elsewhere than the file (an environment variable), and from where."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.key_lines = {}
        self.key_sources = {}

    def line_of(self, key: Any) -> int:
        return self.key_lines.get(key, self.line)


class _ItemLines:
    """``line_of`` for a list whose items keep their lines: the item's, else the list's own."""

    line: int | None
    item_lines: list[int] | tuple[int, ...]

    def line_of(self, index: int) -> int | None:
        return self.item_lines[index] if 0 <= index < len(self.item_lines) else self.line


def item_line(items: object, index: int) -> int | None:
    """The line of item ``index`` of a list read from YAML (:class:`Sequence` or :class:`Located`); ``None`` for
    any other list (one given in code or on the command line)."""
    return items.line_of(index) if isinstance(items, _ItemLines) else None


class Sequence(_ItemLines, list):  # type: ignore[type-arg]
    """A YAML list with ``line`` and ``item_lines``."""

    line: int = 0
    file: str = ""
    item_lines: list[int]

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.item_lines = []


class Located(_ItemLines, tuple):  # type: ignore[type-arg]
    """The text items of a YAML list as a tuple (for frozen settings) that keeps each item's line, so a problem found
    after parsing (a trusted proxy that is no network, a bad glob) still points at file:line. Equal to the plain
    tuple of the same items."""

    item_lines: tuple[int, ...] = ()
    line: int | None = None

    @classmethod
    def of(cls, items: Any) -> Located:
        located = cls(str(item) for item in items)
        if isinstance(items, Sequence):
            located.item_lines = tuple(items.item_lines)
            located.line = items.line
        return located


def _loader_for(file: str) -> type[yaml.SafeLoader]:
    class Loader(yaml.SafeLoader):
        pass

    def construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> Mapping:
        # Keys written in this mapping, apart from those a merge key (<<: *anchor) brings in: a written key
        # overrides a merged one (YAML's merge semantics); only two written keys are a duplicate.
        written = {id(key_node) for key_node, _ in node.value if key_node.tag != "tag:yaml.org,2002:merge"}
        loader.flatten_mapping(node)
        result = Mapping()
        result.line = node.start_mark.line + 1
        result.file = file
        result.key_lines = {}
        merged: set[Any] = set()
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                hash(key)
            except TypeError:
                raise ConfigError("a mapping key must be a plain value", file=file, line=line) from None
            if id(key_node) not in written:
                merged.add(key)
            elif key in merged:
                merged.discard(key)  # overrides the merged value
            elif key in result:
                raise ConfigError(
                    f"duplicate key {key!r} (first at line {result.key_lines[key]})",
                    file=file,
                    line=line,
                )
            result[key] = loader.construct_object(value_node, deep=True)
            result.key_lines[key] = line
        return result

    def construct_sequence(loader: yaml.SafeLoader, node: yaml.SequenceNode) -> Sequence:
        result = Sequence(loader.construct_object(child, deep=True) for child in node.value)
        result.line = node.start_mark.line + 1
        result.file = file
        result.item_lines = [child.start_mark.line + 1 for child in node.value]
        return result

    def construct_timestamp(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Any:
        # 2030-13-01 looks like a date to the resolver but is not one: keep the text, so that validation
        # reports it with its line instead of a bare ValueError from deep inside PyYAML.
        try:
            return yaml.SafeLoader.construct_yaml_timestamp(loader, node)
        except ValueError:
            return loader.construct_scalar(node)

    def construct_number(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Any:
        # A number keeps the text it was written as: where text is expected (a version), 1.10 must stay "1.10",
        # not become 1.1, and 010 not 8.
        value = (yaml.SafeLoader.construct_yaml_float if node.tag.endswith(":float")
                 else yaml.SafeLoader.construct_yaml_int)(loader, node)
        number = (_WrittenFloat if isinstance(value, float) else _WrittenInt)(value)
        number.text = node.value
        return number

    Loader.add_constructor("tag:yaml.org,2002:float", construct_number)
    Loader.add_constructor("tag:yaml.org,2002:int", construct_number)
    Loader.add_constructor("tag:yaml.org,2002:timestamp", construct_timestamp)
    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, construct_sequence)
    return Loader


MAX_ALIAS_GROWTH = 10
"""Aliases may make a document at most this many times its own size (plus :data:`_ALIAS_ALLOWANCE` nodes) once
expanded: a few KB of nested aliases (a "billion laughs") would otherwise take gigabytes wherever the values are
walked or printed in an error message."""
_ALIAS_ALLOWANCE = 10_000


class _WrittenInt(int):
    """An int from YAML that remembers how it was written."""

    text: str


class _WrittenFloat(float):
    """A float from YAML that remembers how it was written."""

    text: str


def loads(text: str, file: str = "<string>") -> Any:
    """Parse one YAML document; syntax errors become :class:`ConfigError` with file:line."""
    try:
        loader = _loader_for(file)(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            _check_aliases(node, file)
            return loader.construct_document(node)
        finally:
            loader.dispose()
    except ConfigError:
        raise
    except RecursionError:
        raise ConfigError("YAML nested too deeply", file=file) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        problem = exc.problem or exc.context or "invalid YAML"
        raise ConfigError(f"YAML syntax error: {problem}", file=file, line=line) from None
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow: it says where, by position
        line = text.count("\n", 0, exc.position) + 1 if isinstance(exc.position, int) else None
        code = ord(exc.character) if isinstance(exc.character, str) else exc.character
        raise ConfigError(f"YAML error: the character U+{code:04X} is not allowed in YAML (control characters "
                          "other than tab and line breaks are not)", file=file, line=line) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"YAML error: {exc}", file=file) from None


def _check_aliases(root: yaml.Node, file: str) -> None:
    """Refuse a document whose aliases expand it past :data:`MAX_ALIAS_GROWTH` (a node reached twice is one
    anchored node used again)."""
    expanded: dict[int, int] = {}
    open_nodes: set[int] = set()
    worst: tuple[int, yaml.Node] = (0, root)

    def size(node: yaml.Node) -> int:
        nonlocal worst
        known = expanded.get(id(node))
        if known is not None:
            if known > worst[0]:
                worst = (known, node)
            return known
        if id(node) in open_nodes:
            raise ConfigError("recursive YAML alias (a node that contains itself)", file=file,
                              line=node.start_mark.line + 1)
        open_nodes.add(id(node))
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            total += sum(size(key) + size(value) for key, value in node.value)
        open_nodes.discard(id(node))
        expanded[id(node)] = total
        return total

    whole = size(root)
    if whole > MAX_ALIAS_GROWTH * len(expanded) + _ALIAS_ALLOWANCE:
        raise ConfigError(f"YAML aliases expand this document to {whole:,} values from {len(expanded):,} written: "
                          "refused (nested aliases like these are a way to exhaust memory)", file=file,
                          line=worst[1].start_mark.line + 1)


MAX_FILE_BYTES = 64 * 1024 * 1024
"""The largest config, pack, manifest or authorization file read: a link to /dev/zero (or a runaway generator)
must be a message, not a process killed for its memory."""


def read_file(path: str | Path, *, what: str = "a YAML file", missing: str = "file not found") -> bytes:
    """The bytes of a regular file of at most :data:`MAX_FILE_BYTES`; anything else is a :class:`ConfigError`
    naming it. Opened without blocking: a FIFO in a pack directory would hang ``check`` and a reload."""
    file = str(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ConfigError(missing, file=file) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", file=file) from None
    too_large = f"larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB: refused, expected {what}"
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise ConfigError(f"is a directory, expected {what}", file=file)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"is not a regular file (a device, FIFO or socket), expected {what}", file=file)
        if info.st_size > MAX_FILE_BYTES:
            raise ConfigError(too_large, file=file)
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb") as handle:
            fd = -1  # the handle closes it
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", file=file) from None
    finally:
        if fd >= 0:
            os.close(fd)
    if len(data) > MAX_FILE_BYTES:  # grew while read
        raise ConfigError(too_large, file=file)
    return data


def load(path: str | Path) -> Any:
    """Read and parse a YAML file; an unreadable file is a :class:`ConfigError` naming it."""
    data = read_file(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text ({exc.reason})", file=str(path)) from None
    return loads(text, str(path))


class Fields:
    """Typed access to one YAML mapping that reports faults with file:line.

    ``Fields(mapping, where="rule ir-allow")`` then ``f.str("id")``, ``f.opt_date("until")``…;
    ``f.done()`` rejects keys nobody asked for (typos like ``efective`` must not pass silently).
    """

    def __init__(self, value: Any, *, file: str, what: str, line: int | None = None) -> None:
        if not isinstance(value, dict):
            where = getattr(value, "line", None) or line
            raise ConfigError(f"{what} must be a mapping, got {_type_name(value)}", file=file, line=where)
        self.map = value
        self.file = file
        self.what = what
        self.seen: set[str] = set()

    def line(self, key: str | None = None) -> int | None:
        if isinstance(self.map, Mapping):
            return self.map.line_of(key) if key is not None else self.map.line
        return None

    def error(self, key: str | None, message: str) -> ConfigError:
        source = getattr(self.map, "key_sources", {}).get(key) if key is not None else None
        if source is not None:  # not the file's line: the value came from elsewhere
            return ConfigError(f"{message} (set by {source})", file=self.file)
        return ConfigError(message, file=self.file, line=self.line(key))

    def has(self, key: str) -> bool:
        return key in self.map

    def raw(self, key: str, default: Any = None) -> Any:
        self.seen.add(key)
        return self.map.get(key, default)

    def _get(self, key: str, required: bool) -> Any:
        self.seen.add(key)
        if key not in self.map or self.map[key] is None:
            if required:
                # A misspelt key ('efective') is the likeliest reason: name it and its line rather than the parent.
                typo = next(iter(difflib.get_close_matches(key, [k for k in self.map if isinstance(k, str)
                                                                 and k not in self.seen], n=1, cutoff=0.75)), None)
                if typo is not None:
                    raise self.error(typo, f"{self.what}: unknown key {typo!r}: did you mean {key!r}? (a required "
                                           "key)")
                raise self.error(None, f"{self.what}: missing required key {key!r}")
            return None
        return self.map[key]

    def str(self, key: str, *, required: bool = True, choices: tuple[str, ...] | None = None) -> Any:
        value = self._get(key, required)
        if value is None:
            return None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = getattr(value, "text", None) or str(value)  # as written: 1.10, not 1.1
        if not isinstance(value, str):
            raise self.error(key, f"{self.what}: {key} must be text, got {_type_name(value)}")
        if choices is not None and value not in choices:
            raise self.error(key, f"{self.what}: {key} must be one of {', '.join(choices)}; got {value!r}")
        return value

    def bool(self, key: str, *, required: bool = True) -> Any:
        value = self._get(key, required)
        if value is None:
            return None
        if not isinstance(value, bool):
            raise self.error(key, f"{self.what}: {key} must be true or false, got {value!r}")
        return value

    def int(self, key: str, *, required: bool = True, minimum: int | None = None) -> Any:
        value = self._get(key, required)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"{self.what}: {key} must be a whole number, got {value!r}")
        if minimum is not None and value < minimum:
            raise self.error(key, f"{self.what}: {key} must be at least {minimum}, got {value}")
        return value

    def date(self, key: str, *, required: bool = True) -> Any:
        value = self._get(key, required)
        if value is None:
            return None
        return parse_date(value, where=f"{self.what}: {key}", file=self.file, line=self.line(key))

    def list(self, key: str, *, required: bool = True) -> Any:
        value = self._get(key, required)
        if value is None:
            return None
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            return [value]
        if not isinstance(value, list):
            raise self.error(key, f"{self.what}: {key} must be a list, got {_type_name(value)}")
        return value

    def mapping(self, key: str, *, required: bool = True) -> Any:
        value = self._get(key, required)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self.error(key, f"{self.what}: {key} must be a mapping, got {_type_name(value)}")
        return value

    def done(self) -> None:
        unknown = [k for k in self.map if k not in self.seen]
        if unknown:
            key = unknown[0]
            known = ", ".join(sorted(self.seen))
            raise self.error(key, f"{self.what}: unknown key {key!r} (known keys: {known})")


def parse_date(value: Any, *, where: str, file: str, line: int | None) -> dt.date:
    """A calendar date from YAML (``2010-03-08``, unquoted or quoted). A date with a time is refused: dates are days
    taken at 00:00 UTC, and keeping the day of ``2010-03-07T23:00:00-05:00`` would start a rule a day early."""
    if isinstance(value, dt.datetime):
        raise ConfigError(f"{where} must be a calendar date like 2010-03-08 (taken at 00:00 UTC), not a date and "
                          f"time ({value.isoformat()})", file=file, line=line)
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value.strip())
        except ValueError:
            pass
    raise ConfigError(f"{where} must be a date like 2010-03-08, got {value!r}", file=file, line=line)


def _type_name(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: "text", bool: "true/false", int: "a number",
            float: "a number"}.get(type(value).__mro__[-2] if type(value) in (Mapping, Sequence) else type(value),
                                   type(value).__name__)
