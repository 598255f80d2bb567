"""Editing one member of a JSON object line while every other byte stays as written.

A round trip through `json` would rewrite what users care about: big integers, `1e400`, long decimals, `1E5`,
escapes and duplicate keys. Here the line is only scanned for its top-level members' spans and the one member's
value is replaced (or the member appended). Of duplicate keys the last counts, as in `json.loads`."""

import json
import re
from typing import Callable, Mapping

WHITESPACE = re.compile(r"[ \t\n\r]*")
_decoder = json.JSONDecoder()


def member_spans(text: str) -> tuple[list[tuple[str, int, int]], int]:
    """([(key, value start, value end)] of the top-level members of the JSON object `text`, the index of its
    closing brace). `text` must be a valid JSON object (as every ok sample's line is)."""
    at = WHITESPACE.match(text, 0).end()  # type: ignore[union-attr]
    if text[at:at + 1] != "{":
        raise ValueError("not a JSON object")
    at = skip(text, at + 1)
    spans: list[tuple[str, int, int]] = []
    if text[at] == "}":
        return spans, at
    while True:
        key, at = json.decoder.scanstring(text, at + 1)  # type: ignore[attr-defined]
        start = skip(text, skip(text, at) + 1)  # past the colon
        _, end = _decoder.raw_decode(text, start)
        spans.append((key, start, end))
        at = skip(text, end)
        if text[at] == "}":
            return spans, at
        at = skip(text, at + 1)  # past the comma


def skip(text: str, at: int) -> int:
    return WHITESPACE.match(text, at).end()  # type: ignore[union-attr]


def set_members(text: str, values: Mapping[str, Callable[[str | None], str]]) -> str:
    """`text` with each member `key` of `values` set to `values[key](its value as written, or None)` (JSON text):
    in place of its last occurrence, or appended before the closing brace. One scan of the line."""
    spans, closing = member_spans(text)
    last = {name: (start, end) for name, start, end in spans}
    appended = [f"{json.dumps(key, ensure_ascii=False)}: {make(None)}" for key, make in values.items() if key not in last]
    if appended:
        head = text[:closing].rstrip()
        separator = "" if head.endswith("{") else ", "
        text = head + separator + ", ".join(appended) + text[closing:]
    edits = sorted(((*last[key], make) for key, make in values.items() if key in last), reverse=True)
    for start, end, make in edits:
        text = text[:start] + make(text[start:end]) + text[end:]
    return text


LINE_SPLITTERS = re.compile("[\r\u2028\u2029\x85]")
ESCAPES = {"\r": " ", "\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"}


def one_physical_line(text: str) -> str:
    """The JSON text with nothing a reader may split lines at: a raw carriage return, which valid JSON holds only
    as whitespace between tokens, becomes a space; U+2028, U+2029 and U+0085, which it holds only inside strings
    (where `str.splitlines` splits), are escaped. The values stay the same."""
    return LINE_SPLITTERS.sub(lambda found: ESCAPES[found.group()], text) if LINE_SPLITTERS.search(text) else text
