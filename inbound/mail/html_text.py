"""HTML to plain text for mail bodies, with quoted history marked so reply_text can cut it.

Built on the stdlib ``html.parser.HTMLParser``. That parser is quadratic on markup that does
not close (``"<a b='>'" * 7000`` takes seconds; see gh-135462), so ``_canonicalise`` first makes
one linear pass that rebuilds every tag as ``<name id=".." class="..">`` (the only attributes
read here), drops comments and declarations, and escapes stray ``<``. The parser then only
ever sees constructs that end where they start.

Quote handling: ``<blockquote>`` content comes out ``> ``-prefixed, and the containers mail
clients put around quoted history (Gmail ``div.gmail_quote``, Outlook ``#divRplyFwdMsg`` and
``#appendonsend``, Yahoo ``div.yahoo_quoted``, ``<hr>``) start with ``QUOTE_MARKER``, a line of
underscores that reply_text treats as the end of the reply (Outlook writes the same line in its
plain-text part).
"""

from __future__ import annotations

import html
import logging
from html.parser import HTMLParser

__all__ = ["QUOTE_MARKER", "html_to_text"]

logger = logging.getLogger(__name__)

QUOTE_MARKER = "_" * 32

_SKIP = frozenset({"script", "style", "title", "template", "head", "xml"})
_BLOCK = frozenset(
    {
        "address", "article", "aside", "caption", "center", "dd", "details", "dialog", "div",
        "dl", "dt", "fieldset", "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4",
        "h5", "h6", "header", "li", "main", "nav", "ol", "section", "summary", "table", "tbody",
        "tfoot", "thead", "tr", "ul",
    }
)
_VOID = frozenset({"br", "hr", "img", "wbr", "input", "meta", "link", "col", "area", "base"})
_QUOTE_IDS = frozenset({"divrplyfwdmsg", "appendonsend", "mail-editor-reference-message-container"})
_QUOTE_CLASSES = frozenset({"gmail_quote", "gmail_quote_container", "yahoo_quoted"})
# Attributes are looked for in this much of a tag.
_ATTR_CHARS = 2048
# Consecutive blank lines kept in the output.
_MAX_BLANK = 1


def html_to_text(html_text: str) -> str:
    """Return the readable text of an HTML mail body."""
    try:
        converter = _Converter()
        converter.feed(_canonicalise(html_text))
        converter.close()
        return converter.text()
    except Exception as err:  # HTMLParser raises AssertionError on some malformed markup
        logger.debug("html_to_text fell back to tag stripping", extra={"error": type(err).__name__})
        return _strip_tags(html_text)


def _canonicalise(s: str) -> str:
    """Rewrite markup so HTMLParser only meets text, ``<name id=".." class="..">`` and
    ``</name>``: comments, declarations and processing instructions are dropped, a ``<`` that
    starts no tag is escaped, and every tag is rebuilt with only the attributes we read.

    One pass: every search goes through a ``_Next`` cache, and positions only move forward.
    """
    out: list[str] = []
    n = len(s)
    gt, eq = _Next(s, ">"), _Next(s, "=")
    quotes = {"'": _Next(s, "'"), '"': _Next(s, '"')}
    i = 0
    while i < n:
        lt = s.find("<", i)
        if lt < 0:
            out.append(s[i:])
            break
        out.append(s[i:lt])
        following = s[lt + 1 : lt + 2]
        if s.startswith("<!--", lt):
            close = s.find("-->", lt + 4)
            if close < 0:
                break  # an unclosed comment runs to the end (HTML5 "eof-in-comment")
            i = close + 3
            continue
        if following in ("!", "?"):
            close = gt.at(lt + 2)
            if close < 0:
                out.append("&lt;")
                i = lt + 1
            else:
                i = close + 1  # doctype, <![if mso]>, CDATA, processing instruction: no text
            continue
        name_at = lt + 2 if following == "/" else lt + 1
        if not (s[name_at : name_at + 1].isascii() and s[name_at : name_at + 1].isalpha()):
            out.append("&lt;")
            i = lt + 1
            continue
        end = _tag_end(s, name_at, gt, eq, quotes)
        if end < 0:
            # No ">" closes this tag: the rest holds no tag either. Keep it as text.
            out.append(s[lt:].replace("<", "&lt;"))
            break
        out.append(_rebuild(s, lt, name_at, end))
        i = end + 1
    return "".join(out)


class _Next:
    """Position of the next ``ch`` at or after a position; queries must not go backwards, so
    all the searches together read the string once."""

    __slots__ = ("_s", "_ch", "_found", "_asked")

    def __init__(self, s: str, ch: str) -> None:
        self._s = s
        self._ch = ch
        self._found = -2
        self._asked = -1

    def at(self, pos: int) -> int:
        if self._found == -1 and pos >= self._asked:
            return -1
        if self._found < pos:
            self._found = self._s.find(self._ch, pos)
            self._asked = pos
        return self._found


def _tag_end(s: str, pos: int, gt: _Next, eq: _Next, quotes: dict[str, _Next]) -> int:
    """Return the index of the ``>`` ending the tag whose name starts at ``pos``, or -1.

    A ``>`` inside a quoted attribute value does not end the tag; a quote that never closes is
    ignored (the tag then ends at the next ``>``).
    """
    n = len(s)
    while True:
        close = gt.at(pos)
        if close < 0:
            return -1
        equals = eq.at(pos)
        if equals < 0 or close < equals:
            return close
        v = equals + 1
        while v < n and s[v] in " \t\n\r\f":
            v += 1
        quote = s[v : v + 1]
        if quote in quotes:
            closing = quotes[quote].at(v + 1)
            if closing < 0:
                return gt.at(v + 1)
            pos = closing + 1
        else:
            pos = v


def _rebuild(s: str, lt: int, name_at: int, end: int) -> str:
    k = name_at
    while k < end and (s[k].isascii() and (s[k].isalnum() or s[k] in "-:_")):
        k += 1
    name = s[name_at:k].lower()
    if name_at == lt + 2:
        return f"</{name}>"
    rest = s[k : min(end, k + _ATTR_CHARS)]
    attrs = "".join(
        f' {key}="{value}"' for key in ("id", "class") if (value := _attr_value(rest, key))
    )
    return f"<{name}{attrs}>"


def _attr_value(segment: str, key: str) -> str:
    """Return the value of attribute ``key`` in the inside of a tag, reduced to safe chars."""
    low = segment.lower()
    n = len(low)
    at = low.find(key)
    while at >= 0:
        v = at + len(key)
        if at > 0 and low[at - 1].isspace():
            while v < n and low[v].isspace():
                v += 1
            if v < n and low[v] == "=":
                v += 1
                while v < n and low[v].isspace():
                    v += 1
                break
        at = low.find(key, at + 1)
    if at < 0:
        return ""
    quote = segment[v : v + 1]
    if quote in ("'", '"'):
        close = segment.find(quote, v + 1)
        value = segment[v + 1 : close if close >= 0 else n]
    else:
        stop = v
        while stop < n and not segment[stop].isspace() and segment[stop] != "/":
            stop += 1
        value = segment[v:stop]
    return "".join(c for c in value if c.isalnum() or c in " _-:.")


class _Converter(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self._lines: list[str] = []
        self._current: list[str] = []
        self._depth = 0  # blockquote nesting
        self._skip = 0  # inside script/style/title/...
        self._in_head = False
        self._pre = 0
        self._lists: list[int] = []  # per open list: next number, 0 for bullets
        self._paragraphs: list[bool] = []  # per open <p>: is it Outlook's MsoNormal
        self._blank_run = 0

    # -- output ------------------------------------------------------------------------------

    def text(self) -> str:
        self._end_line()
        while self._lines and not self._lines[-1].strip("> "):
            self._lines.pop()
        first = 0
        while first < len(self._lines) and not self._lines[first].strip("> "):
            first += 1
        return "\n".join(self._lines[first:])

    def _emit(self, content: str) -> None:
        prefix = ">" * self._depth
        if not content:
            self._blank_run += 1
            if self._blank_run > _MAX_BLANK:
                return
            self._lines.append(prefix)
            return
        self._blank_run = 0
        self._lines.append(f"{prefix} {content}" if prefix else content)

    def _end_line(self, force: bool = False) -> None:
        """Finish the current line; with ``force`` (a <br>) even when it is empty."""
        if self._pre:
            raw = "".join(self._current)
            self._current = []
            if raw or force:
                self._emit(raw.rstrip())
            return
        content = " ".join("".join(self._current).split())
        self._current = []
        if content or force:
            self._emit(content)

    def _paragraph(self) -> None:
        self._end_line()
        if self._lines and self._blank_run == 0:
            self._emit("")

    def _marker(self) -> None:
        self._end_line()
        if self._depth:
            return
        for line in reversed(self._lines):
            if line:
                if line == QUOTE_MARKER:
                    return
                break
        self._blank_run = 0
        self._lines.append(QUOTE_MARKER)

    # -- parser callbacks --------------------------------------------------------------------

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "body":
            self._in_head = False
            return
        if tag == "head":
            self._in_head = True
            return
        if tag in _SKIP:
            self._skip += 1
            return
        if self._skip or self._in_head:
            return
        if tag == "br":
            self._end_line(force=True)
        elif tag == "hr":
            self._marker()
        elif tag == "blockquote":
            self._end_line()
            self._depth += 1
        elif tag == "p":
            mso = _is_mso(attrs)
            self._paragraphs.append(mso)
            if mso:
                self._end_line()
            else:
                self._paragraph()
        elif tag == "pre":
            self._paragraph()
            self._pre += 1
        elif tag in ("ul", "ol"):
            self._end_line()
            self._lists.append(1 if tag == "ol" else 0)
        elif tag == "li":
            self._end_line()
            if self._lists and self._lists[-1]:
                self._current.append(f"{self._lists[-1]}. ")
                self._lists[-1] += 1
            else:
                self._current.append("- ")
        elif tag in ("td", "th"):
            self._current.append(" ")
        elif tag in _BLOCK:
            if tag == "div" and _is_quote_container(attrs):
                self._marker()
            else:
                self._end_line()

    def handle_endtag(self, tag: str) -> None:
        if tag == "head":
            self._in_head = False
            return
        if tag in _SKIP:
            self._skip = max(0, self._skip - 1)
            return
        if self._skip or self._in_head:
            return
        if tag == "blockquote":
            self._end_line()
            self._depth = max(0, self._depth - 1)
        elif tag == "p":
            # Outlook spaces lines with margin-less <p class=MsoNormal> and writes blank lines
            # as <p class=MsoNormal>&nbsp;</p>; other paragraphs are separated by a blank line.
            mso = self._paragraphs.pop() if self._paragraphs else False
            if not mso:
                self._paragraph()
            elif "".join(self._current).strip():
                self._end_line()
            else:
                self._end_line(force=True)
        elif tag == "pre":
            self._end_line()
            self._pre = max(0, self._pre - 1)
            self._paragraph()
        elif tag in ("ul", "ol"):
            self._end_line()
            if self._lists:
                self._lists.pop()
        elif tag in _BLOCK:
            self._end_line()

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in _VOID:  # <br/> and <hr/> already did their work
            self.handle_endtag(tag)

    def handle_data(self, data: str) -> None:
        if self._skip or self._in_head:
            return
        if not self._pre:
            self._current.append(data)
            return
        pieces = data.split("\n")
        for k, piece in enumerate(pieces):
            if k:
                self._end_line(force=True)
            self._current.append(piece)


def _attr(attrs: list[tuple[str, str | None]], name: str) -> str:
    for key, value in attrs:
        if key == name and value:
            return value
    return ""


def _is_mso(attrs: list[tuple[str, str | None]]) -> bool:
    return _attr(attrs, "class").lower().startswith("mso")


def _is_quote_container(attrs: list[tuple[str, str | None]]) -> bool:
    if _attr(attrs, "id").lower() in _QUOTE_IDS:
        return True
    classes = _attr(attrs, "class").lower().split()
    return any(c in _QUOTE_CLASSES for c in classes)


def _strip_tags(s: str) -> str:
    """Last resort: drop everything between ``<`` and ``>`` in one pass and unescape."""
    out: list[str] = []
    i = 0
    n = len(s)
    while i < n:
        lt = s.find("<", i)
        if lt < 0:
            out.append(s[i:])
            break
        out.append(s[i:lt])
        gt = s.find(">", lt + 1)
        if gt < 0:
            out.append(s[lt:])
            break
        out.append(" ")
        i = gt + 1
    lines = (" ".join(line.split()) for line in html.unescape("".join(out)).split("\n"))
    return "\n".join(line for line in lines if line)
