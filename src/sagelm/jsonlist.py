"""A JSON list read one item at a time, so that a file of hundreds of MB is never held whole.

`json.load` holds the whole text and then every object of it: a 480 MB reference of 400,000 rows took about
1.2 GB before the first row was looked at. `items` decodes a few MiB of text at a time and hands out each
item as soon as it is parsed (by the standard library's own scanner, `JSONDecoder.raw_decode`), so what stays
is only what the caller keeps of each item.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterator
from typing import IO, Any

CHUNK_BYTES = 4 * 2**20  # read at a time: refills cost nothing beside the parsing, and it is small beside the file
_SPACE = re.compile(r"[ \t\n\r]*")  # the whitespace JSON allows between tokens
_NUMBER_GOES_ON = frozenset("0123456789.eE+-")  # a number followed by one of these may have been cut by a read
_DECODER = json.JSONDecoder()
_KIND = {"{": "a JSON object", '"': "a JSON string", "": "an empty file"}  # by the first character
_LITERALS = {"true": "a JSON boolean", "false": "a JSON boolean", "null": "JSON null"}


class NotAList(ValueError):
    """The file holds some other JSON value or nothing; the message says what ("a JSON object", ...)."""


class Invalid(ValueError):
    """The file is not valid JSON; the message names the item where parsing stopped."""


class _Text:
    """Decoded text of a binary stream, read on demand; `pos` is where parsing stands in `text`."""

    def __init__(self, f: IO[bytes]) -> None:
        head = f.read(4)
        self._f = f
        self._decode = codecs.getincrementaldecoder(json.detect_encoding(head))().decode  # a BOM is dropped
        self.eof = not head
        self.text = self._decode(head, final=self.eof)
        self.pos = 0

    def more(self) -> bool:
        """Read on (at least as much again as the item being parsed, so that a huge item costs linear time);
        False at the end of the stream."""
        if self.eof:
            return False
        data = self._f.read(max(CHUNK_BYTES, 2 * (len(self.text) - self.pos)))
        self.eof = not data
        self.text = self.text[self.pos:] + self._decode(data, final=self.eof)
        self.pos = 0
        return True

    def peek(self) -> str:
        """The next character that is not whitespace ("" at the end), without taking it."""
        while True:
            self.pos = _SPACE.match(self.text, self.pos).end()  # type: ignore[union-attr]
            if self.pos < len(self.text):
                return self.text[self.pos]
            if not self.more():
                return ""

    def value(self) -> Any:
        """The JSON value that starts here. A value cut by the end of what has been read either fails to parse
        or (a number: "12" of "123", "1.5" of "1.5e3") parses short, so either way more is read and it is parsed
        again."""
        self.peek()
        while True:
            try:
                obj, end = _DECODER.raw_decode(self.text, self.pos)
            except json.JSONDecodeError:
                if self.more():
                    continue
                raise
            if not self._whole(obj, end) and self.more():
                continue
            self.pos = end
            return obj

    def _whole(self, obj: Any, end: int) -> bool:
        """Whether the value parsed up to `end` cannot go on past what has been read."""
        if end == len(self.text):
            return self.eof
        return type(obj) not in (int, float) or self.text[end] not in _NUMBER_GOES_ON


def _kind(head: str, first: str) -> str:
    """What a file holds instead of a list, from its first characters ("a JSON object", "an empty file", ...)."""
    if first in _KIND:
        return _KIND[first]
    literal = next((w for w in _LITERALS if head.startswith(w)), None)
    if literal:
        return _LITERALS[literal]
    return "a JSON number" if first in "-0123456789" else "text that is not JSON"


def items(f: IO[bytes]) -> Iterator[Any]:
    """The items of the JSON list that the binary stream `f` holds (UTF-8, -16 or -32, with or without a BOM).
    Raises NotAList, Invalid, or UnicodeDecodeError for text that is not in its encoding."""
    t = _Text(f)
    first = t.peek()
    if first != "[":
        raise NotAList(_kind(t.text[t.pos:t.pos + 5], first))
    t.pos += 1
    n = 0
    if t.peek() == "]":
        t.pos += 1
    else:
        while True:
            try:
                value = t.value()
            except json.JSONDecodeError as e:
                raise Invalid(f"item {n}: {e.msg}") from None
            yield value
            n += 1
            c = t.peek()
            t.pos += 1
            if c == "]":
                break
            if c != ",":
                raise Invalid(f"after item {n - 1}: expected ',' or ']'" + (", found the end" if not c else ""))
    if t.peek():
        raise Invalid(f"after the list's {n} items: more data")
