"""The glossary test pages and a real HTTP server for them (shared by test_glossary and test_config_new)."""
from __future__ import annotations

import functools
import http.server
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from tests.conftest import REPO

PAGES = REPO / "tests" / "data" / "glossary"
PHYSICS = PAGES / "physics.html"
PHYSICS_TERMS = [
    "absolute zero",
    "absorption spectroscopy",  # no link
    "acceleration",  # the footnote marker [2] after it is not part of the term
    "ampere",  # "(A)" qualifier dropped
    "Ångström",  # &#197;ngstr&ouml;m
    "a priori",  # italics, no link
    "alternating current",
    "Bernoulli's principle",  # &#39; and an empty anchor span
    "beta-particle",  # span.nowrap with a non-breaking hyphen &#8209;
    "black body",  # a line break inside the link
    "black-body radiation",  # a glossary nested in a definition
    "Boltzmann constant",  # "(<i>k</i><sub>B</sub>)" dropped
    "Bose–Einstein condensate",  # &ndash; kept: it is the name's own dash
    "Brownian motion",
    "Brownian movement",  # a second <dt> for the same definition, no link
    "bulk & shear modulus",  # &amp;
]  # "Absolute Zero" again under B is a duplicate; "See also", contents and references are not terms


def one_line_error(result) -> str:
    """The CLI's bad-input contract: exit 2, one line on stderr, no traceback, nothing on stdout."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


@dataclass
class GlossaryServer:
    url: str
    user_agents: list[str] = field(default_factory=list)


class _Handler(http.server.SimpleHTTPRequestHandler):
    seen: list[str]

    def do_GET(self) -> None:
        self.seen.append(self.headers.get("User-Agent", ""))
        if self.path == "/cp1252.html":  # a server that declares its charset only in the header
            body = PHYSICS.read_text(encoding="utf-8").replace('<meta charset="UTF-8">', "")
            body = body.replace("&#197;ngstr&ouml;m", "Ångström").replace("Bose&ndash;Einstein", "Bose–Einstein")
            data = body.encode("cp1252", errors="xmlcharrefreplace")
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=windows-1252")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep the test output clean


@pytest.fixture
def glossary_server() -> Iterator[GlossaryServer]:
    """Serves tests/data/glossary/ (and /cp1252.html) on a free port; records User-Agents."""
    seen: list[str] = []
    handler = functools.partial(type("Handler", (_Handler,), {"seen": seen}), directory=str(PAGES))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield GlossaryServer(f"http://127.0.0.1:{server.server_address[1]}", seen)
    finally:
        server.shutdown()
        server.server_close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
