"""Terms from a Wikipedia-style glossary page (``producer words glossary``).

Wikipedia's glossary templates render each term as
``<dl class="glossary"><dt class="glossary" id=...><dfn class="glossary">term</dfn></dt><dd ...>``;
the ``<dfn>`` may hold a link, italics, spans or a qualifier such as "(C)". We read it with
lxml (entities decoded, inner markup flattened) instead of grepping lines, which is what lost
every unlinked term in the seed guide's ``grep | sed`` pipeline.

Qualifiers are **dropped** by default ("ampere (A)" -> "ampere"): the word goes into a prompt
("conveys the meaning of ...") and the filters look for it in the first line, where a model
writes "ampere", not "ampere (A)". ``keep_qualifiers=True`` keeps them.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import lxml.html
from lxml import etree

from producer.words.clean import WordSourceError, dedupe, drop_qualifiers, normalise

USER_AGENT = "convfarm/0.1 (conversation training data; glossary word lists) python-urllib"
MAX_BYTES = 32 << 20  # the largest Wikipedia glossaries are ~2 MB; anything far bigger is not a glossary page

# class~="glossary", the XPath way (matches "glossary" among other classes, not "glossary-x")
_HAS_GLOSSARY_CLASS = "contains(concat(' ', normalize-space(@class), ' '), ' glossary ')"
# markup whose text is never part of a term: footnote markers, edit links, styles
_NOISE = ("//sup[contains(@class, 'reference')] | //span[contains(@class, 'mw-editsection')]"
          " | //style | //script | //*[contains(@style, 'display:none') or contains(@style, 'display: none')]")


@dataclass(frozen=True)
class Glossary:
    terms: list[str]
    markup: str  # which markup the terms came from, to tell the user


def is_url(source: str) -> bool:
    return urllib.parse.urlsplit(source).scheme in ("http", "https")


def fetch(url: str, *, timeout: float = 30.0) -> tuple[bytes, str | None]:
    """The page's bytes and the charset its server declared. Raises :class:`WordSourceError`."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept": "text/html"})
    host = urllib.parse.urlsplit(url).hostname or url
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read(MAX_BYTES + 1)
            charset = response.headers.get_content_charset()
    except urllib.error.HTTPError as exc:
        raise WordSourceError(f"{url}: HTTP error {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError):
            raise WordSourceError(f"{url}: no answer from {host} within {timeout:g}s") from None
        raise WordSourceError(f"{url}: cannot reach {host} ({exc.reason})") from None
    except TimeoutError:
        raise WordSourceError(f"{url}: no answer from {host} within {timeout:g}s") from None
    except OSError as exc:  # a connection reset half-way through the body, for instance
        raise WordSourceError(f"{url}: download failed ({exc})") from None
    if len(body) > MAX_BYTES:
        raise WordSourceError(f"{url}: the page is larger than {MAX_BYTES >> 20} MB; is it really a glossary?")
    return body, charset


def read_source(source: str, *, timeout: float = 30.0) -> tuple[bytes, str | None]:
    """A URL, a saved HTML file, or ``-`` for standard input."""
    if is_url(source):
        return fetch(source, timeout=timeout)
    if source == "-":
        return sys.stdin.buffer.read(), None
    path = Path(source).expanduser()
    try:
        return path.read_bytes(), None
    except FileNotFoundError:
        raise WordSourceError(f"{source}: no such file (give a saved HTML file or an http(s):// URL)") from None
    except IsADirectoryError:
        raise WordSourceError(f"{source}: is a directory, not an HTML file") from None
    except OSError as exc:
        raise WordSourceError(f"{source}: cannot read ({exc.strerror or exc})") from None


def parse_html(data: bytes, charset: str | None = None) -> etree._Element:
    # Decode ourselves when we can: lxml guesses Latin-1 for a saved page without a <meta charset>,
    # which turns every UTF-8 "é" into "Ã©". A page that is not UTF-8 falls back to lxml's sniffing.
    try:
        text = data.decode(charset or "utf-8")
    except (UnicodeDecodeError, LookupError):
        text = None
    try:
        if text is not None:
            # lxml refuses str input that still carries an XML encoding declaration
            text = text.removeprefix("\ufeff")
            if text.lstrip().startswith("<?xml"):
                text = text.split("?>", 1)[1]
            return lxml.html.document_fromstring(text or "<html></html>")
        return lxml.html.document_fromstring(data)
    except (etree.ParserError, ValueError) as exc:
        raise WordSourceError(f"not an HTML page ({exc})") from None


def _text(element: etree._Element) -> str:
    return normalise(element.text_content())


def _terms_of_dt(dt: etree._Element) -> list[str]:
    # A <dt> may carry several <dfn> (alternative spellings of one entry): each is a term.
    dfns = dt.xpath(".//dfn")
    return [_text(d) for d in dfns] if dfns else [_text(dt)]


def extract(html: etree._Element, *, keep_qualifiers: bool = False) -> Glossary:
    """Every glossary term of the page, in page order, de-duplicated case-insensitively.

    Markups, the first one the page has wins (so a page's other lists are ignored):
    ``<dt class="glossary">`` (Wikipedia's templates), ``<dt><dfn>`` (hand-made glossaries that
    mark the defined term), then any ``<dl><dt>`` (a plain definition list).
    """
    for noise in html.xpath(_NOISE):
        noise.drop_tree()  # keeps the tail text, which belongs to the surrounding element
    strategies = [
        ('<dt class="glossary">', f"//dt[{_HAS_GLOSSARY_CLASS}]"),
        ("<dt><dfn>", "//dt[.//dfn]"),
        ("<dl><dt>", "//dl/dt"),
    ]
    for markup, xpath in strategies:
        terms: list[str] = []
        for dt in html.xpath(xpath):
            terms.extend(_terms_of_dt(dt))
        if not keep_qualifiers:
            terms = [drop_qualifiers(t) for t in terms]
        terms = dedupe(t.strip(" :") for t in terms)
        if terms:
            return Glossary(terms, markup)
    return Glossary([], "")


def glossary_terms(source: str, *, timeout: float = 30.0, keep_qualifiers: bool = False) -> Glossary:
    """Read ``source`` (URL, file or ``-``) and extract its terms; no terms is an error."""
    data, charset = read_source(source, timeout=timeout)
    try:
        glossary = extract(parse_html(data, charset), keep_qualifiers=keep_qualifiers)
    except WordSourceError as exc:
        raise WordSourceError(f"{source}: {exc}") from None
    if not glossary.terms:
        raise WordSourceError(f"{source}: no glossary terms found (looked for <dt class=\"glossary\">, "
                              "<dt><dfn> and <dl><dt> entries)")
    return glossary
