"""rclone-style include and exclude globs, compiled to regular expressions."""

from __future__ import annotations

import re
from typing import Iterable

from .errors import ConfigurationError


def compile_patterns(patterns: Iterable[str]) -> list[re.Pattern[str]]:
    """Compile rclone-style globs: `*` and `?` stay inside one path segment, `**` crosses
    segments, `[a-z]` / `[!a-z]` are character classes, `{a,b}` alternatives, `\\` makes the
    next character literal; a leading `/` anchors at the root, otherwise the pattern matches
    the end of the path (so `*.log` matches `a/b/c.log`). A pattern that is not a valid glob
    is a ConfigurationError naming the pattern and the fix."""
    compiled = []
    for pattern in patterns:
        if not isinstance(pattern, str) or not pattern or pattern.strip("/") == "":
            raise ConfigurationError(f"empty pattern {pattern!r}: give a glob such as '*.log' or 'cache/**'")
        anchored = pattern.startswith("/")
        try:
            body = _glob_to_regex(pattern[1:] if anchored else pattern)
            compiled.append(re.compile(("^" if anchored else "^(?:.*/)?") + body + "$", re.DOTALL))
        except _GlobError as exc:
            raise ConfigurationError(f"invalid pattern {pattern!r}: {exc}") from None
        except re.error as exc:  # a case the checks above missed: still one line, never a traceback
            raise ConfigurationError(f"invalid pattern {pattern!r} ({exc}): write it as a glob, see --help") from None
    return compiled


class _GlobError(Exception):
    pass


# POSIX classes inside brackets, ASCII only as in Go's regexp (which rclone uses).
_POSIX_CLASSES = {
    "alnum": "0-9A-Za-z", "alpha": "A-Za-z", "ascii": "\\x00-\\x7f", "blank": "\\t ",
    "cntrl": "\\x00-\\x1f\\x7f", "digit": "0-9", "graph": "!-~", "lower": "a-z", "print": " -~",
    "punct": "!-/:-@\\[-`{-~", "space": "\\t\\n\\v\\f\\r ", "upper": "A-Z", "word": "0-9A-Za-z_",
    "xdigit": "0-9A-Fa-f",
}


def _glob_to_regex(glob: str) -> str:
    out: list[str] = []
    depth = 0  # open `{` alternatives
    i = 0
    while i < len(glob):
        ch = glob[i]
        if ch == "*":
            stars = len(glob) - i - len(glob[i:].lstrip("*"))
            if stars > 2:
                raise _GlobError("more than two '*' in a row: use '*' within a folder or '**' across folders")
            out.append(".*" if stars == 2 else "[^/]*")
            i += stars
            continue
        if ch == "?":
            out.append("[^/]")
        elif ch == "\\":
            out.append(re.escape(_escaped(glob, i)))
            i += 1
        elif ch == "[":
            regex, i = _char_class(glob, i)
            out.append(regex)
            continue
        elif ch == "]":
            raise _GlobError("']' without '[': write '\\]' for a literal ']'")
        elif ch == "{":
            if glob.startswith("{{", i):
                raise _GlobError("'{{regexp}}' is not supported: use a glob, or '\\{' for a literal '{'")
            depth += 1
            out.append("(?:")
        elif ch == "}":
            if depth == 0:
                raise _GlobError("'}' without '{': write '\\}' for a literal '}'")
            depth -= 1
            out.append(")")
        elif ch == "," and depth:
            out.append("|")
        else:
            out.append(re.escape(ch))
        i += 1
    if depth:
        raise _GlobError("'{' is never closed: close it with '}', or write '\\{' for a literal '{'")
    return "".join(out)


def _escaped(glob: str, i: int) -> str:
    """The character after the backslash at `i`: only punctuation may be escaped (in rclone a
    letter after `\\` means a regexp class such as `\\d`, which this tool does not take)."""
    if i + 1 == len(glob):
        raise _GlobError("ends with a lone '\\': write '\\\\' for a literal backslash")
    ch = glob[i + 1]
    if ch.isalnum():
        raise _GlobError(f"'\\{ch}' is not supported: escape only punctuation; use a class such as '[0-9]' instead")
    return ch


def _char_class(glob: str, start: int) -> tuple[str, int]:
    """The regex for the class `[...]` opening at `start`, and the index after it. A class
    never matches `/`, like `?`."""
    i = start + 1
    negate = i < len(glob) and glob[i] in "!^"
    i += negate
    items: list[str] = []
    while True:
        if i >= len(glob):
            raise _GlobError("'[' is never closed: close the class with ']', or write '\\[' for a literal '['")
        ch = glob[i]
        if ch == "]":
            break
        if ch == "[" and glob.startswith("[:", i):
            end = glob.find(":]", i + 2)
            name = glob[i + 2 : end] if end > 0 else ""
            if name not in _POSIX_CLASSES:
                raise _GlobError(f"unknown class '[:{name}:]': use one such as '[:digit:]', or '\\[' for a literal '['")
            items.append(_POSIX_CLASSES[name])
            i = end + 2
            continue
        if ch == "[":
            raise _GlobError("'[' inside a class: write '\\[' for a literal '['")
        if ch == "-" and items and not glob.startswith("-]", i):
            raise _GlobError("'-' inside a class: write '\\-' for a literal '-' (or put it first or last)")
        lo, i = _class_char(glob, i)
        if glob.startswith("-", i) and i + 1 < len(glob) and glob[i + 1] != "]":
            hi, i = _class_char(glob, i + 1)
            if lo > hi:
                raise _GlobError(f"range '{lo}-{hi}' is reversed: write it as '{hi}-{lo}'")
            items.append(f"{re.escape(lo)}-{re.escape(hi)}")
        else:
            items.append(re.escape(lo))
    if not items:
        raise _GlobError("empty character class: put characters between the brackets, e.g. '[ab]', "
                         "or write '\\[' for a literal '['")
    return ("[^/" if negate else "(?!/)[") + "".join(items) + "]", i + 1


def _class_char(glob: str, i: int) -> tuple[str, int]:
    if i >= len(glob):
        raise _GlobError("'[' is never closed: close the class with ']', or write '\\[' for a literal '['")
    if glob[i] == "\\":
        return _escaped(glob, i), i + 2
    return glob[i], i + 1


def matches(patterns: list[re.Pattern[str]], path: str) -> bool:
    """Whether any of the compiled globs matches `path`."""
    return any(p.match(path) for p in patterns)
