"""``producer words glossary``: every term of a Wikipedia glossary page, from a file or over HTTP.

The fixtures under tests/data/glossary/ are written in Wikipedia's real glossary markup; the
URL tests use a real HTTP server on 127.0.0.1 started here.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from producer.words.glossary import USER_AGENT, glossary_terms
from tests.conftest import producer
from tests.glossary_pages import (
    PAGES,
    PHYSICS,
    PHYSICS_TERMS,
    GlossaryServer,
    closed_port,
    glossary_server,
    one_line_error,
)

__all__ = ["glossary_server"]  # the fixture, imported to be used here

# --- extraction -----------------------------------------------------------------------------------------


@pytest.mark.fast
def test_every_wikipedia_glossary_term_linked_or_not_in_page_order() -> None:
    found = glossary_terms(str(PHYSICS))
    assert found.terms == PHYSICS_TERMS
    assert found.markup == '<dt class="glossary">'


@pytest.mark.fast
def test_qualifiers_can_be_kept() -> None:
    terms = glossary_terms(str(PHYSICS), keep_qualifiers=True).terms
    assert "ampere (A)" in terms and "alternating current (AC)" in terms and "Boltzmann constant (kB)" in terms
    assert "ampere" not in terms
    assert len(terms) == len(PHYSICS_TERMS)


@pytest.mark.fast
def test_hand_made_glossary_with_dfn_but_no_class_ignores_other_lists() -> None:
    # two <dfn> in one <dt> are two terms; the "Credits" definition list is not a glossary
    assert glossary_terms(str(PAGES / "dfn-no-class.html")).terms == ["abeam", "aft", "abaft", "beam reach"]


@pytest.mark.fast
def test_plain_definition_list_utf8_without_charset() -> None:
    # lxml alone would read these bytes as Latin-1 ("crÃ¨me"); footnote markers are dropped
    assert glossary_terms(str(PAGES / "definition-list.html")).terms == ["blanch", "crème brûlée", "julienne"]


# --- the command, on files --------------------------------------------------------------------------------


def test_cli_prints_one_term_per_line_and_counts_on_stderr() -> None:
    result = producer("words", "glossary", str(PHYSICS))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == PHYSICS_TERMS
    assert "16 terms" in result.stderr


def test_cli_json_to_a_file(tmp_path: Path) -> None:
    out = tmp_path / "physics.json"
    result = producer("words", "glossary", str(PHYSICS), "--format", "json", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert json.loads(out.read_text(encoding="utf-8")) == PHYSICS_TERMS


def test_page_without_glossary_is_an_error() -> None:
    line = one_line_error(producer("words", "glossary", str(PAGES / "no-glossary.html")))
    assert "no glossary terms found" in line and "no-glossary.html" in line


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    line = one_line_error(producer("words", "glossary", str(tmp_path / "nope.html")))
    assert "no such file" in line


# --- the command, over HTTP -------------------------------------------------------------------------------


def test_url_is_fetched_with_a_user_agent(glossary_server: GlossaryServer) -> None:
    result = producer("words", "glossary", f"{glossary_server.url}/physics.html")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == PHYSICS_TERMS
    assert glossary_server.user_agents == [USER_AGENT]
    assert USER_AGENT.startswith("convfarm/")


@pytest.mark.fast
def test_charset_from_the_http_header(glossary_server: GlossaryServer) -> None:
    # "–" is byte 0x96 in windows-1252 and a control character in the Latin-1 that lxml would guess
    assert glossary_terms(f"{glossary_server.url}/cp1252.html").terms == PHYSICS_TERMS


def test_http_404_is_one_line(glossary_server: GlossaryServer) -> None:
    line = one_line_error(producer("words", "glossary", f"{glossary_server.url}/Glossary_of_nothing"))
    assert "HTTP error 404" in line and "Glossary_of_nothing" in line


def test_unreachable_host_is_one_line() -> None:
    line = one_line_error(producer("words", "glossary", f"http://127.0.0.1:{closed_port()}/Glossary_of_physics"))
    assert "cannot reach 127.0.0.1" in line


def test_unknown_host_name_is_one_line() -> None:
    line = one_line_error(producer("words", "glossary", "http://glossary.invalid/wiki/Glossary_of_physics",
                                   "--timeout", "5"))
    assert "cannot reach glossary.invalid" in line


def test_silent_server_times_out() -> None:
    # a listening socket that never answers: the connection opens, no response ever comes
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        port = sock.getsockname()[1]
        line = one_line_error(producer("words", "glossary", f"http://127.0.0.1:{port}/slow", "--timeout", "0.5"))
    assert "no answer from 127.0.0.1 within 0.5s" in line
