"""The one render function for untrusted text: user messages, model answers and streaming partials.

markdown-it-py (raw HTML off) → pygments for fenced code → nh3 with an explicit allow-list.
Whatever the text, the result holds no script, no event handler, no ``style``, no ``hx-*``
attribute and no URL with a scheme other than http, https or mailto. Images are never loaded: the
image rule is off, so ``![alt](url)`` becomes a plain link (a remote image URL in model output
could carry data out). Links get ``rel="noopener noreferrer nofollow"``.

The templates put the result inside an element with ``hx-disable``, so even a surviving
attribute could not make htmx act on it.

``StreamRender`` renders a streaming answer as it grows, once per reply (the runner calls it off the
event loop; every viewer gets the same HTML): the top-level blocks that later text can no longer
change are rendered once and kept, and only the last, open block is rendered again; each step says
what changed (the newly finished blocks, the open block), so the page is sent only that. Each block goes
through the same markdown-it → pygments → nh3 path, so the result equals ``render_markdown`` of the
whole text (tests/conversations/test_chat_render.py checks both on the XSS corpus and on generated markdown).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from html import escape

import nh3
from django.utils.safestring import SafeString, mark_safe
from markdown_it import MarkdownIt
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import get_lexer_by_name
from pygments.token import STANDARD_TYPES
from pygments.util import ClassNotFound

# Highlighting is skipped above this size: pygments on a huge block would take the model's CPU.
HIGHLIGHT_MAX_CHARS = 20_000

ALLOWED_TAGS = {
    "p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "strong", "em", "del", "s", "code", "pre",
    "blockquote", "ul", "ol", "li", "a", "table", "thead", "tbody", "tr", "th", "td", "span", "div",
}  # fmt: skip
ALLOWED_ATTRIBUTES = {"a": {"href", "title"}, "ol": {"start"}}
# Only the classes this module itself emits (pygments' token classes), never one of the page's.
_TOKEN_CLASSES = {name for name in STANDARD_TYPES.values() if name}
ALLOWED_CLASSES = {"span": _TOKEN_CLASSES, "pre": {"code"}}
URL_SCHEMES = {"http", "https", "mailto"}
LINK_REL = "noopener noreferrer nofollow"

_formatter = HtmlFormatter(nowrap=True)


def _highlight(code: str, lang: str, _attrs: str) -> str:
    name = (lang or "").split()[0] if lang else ""
    body = escape(code, quote=False)
    if name and len(code) <= HIGHLIGHT_MAX_CHARS:
        try:
            body = highlight(code, get_lexer_by_name(name), _formatter)
        except ClassNotFound:
            pass
    # Starts with "<pre": markdown-it then uses it as the whole block.
    return f'<pre class="code"><code>{body}</code></pre>\n'


@lru_cache(maxsize=1)
def _markdown() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "highlight": _highlight})
    md.enable(["table", "strikethrough"])
    md.disable("image")
    return md


def render_markdown(text: str) -> SafeString:
    """Untrusted markdown to safe HTML (the page shows it as is)."""
    return mark_safe(_clean(_markdown().render(text or "")))  # noqa: S308 - sanitised by _clean


def _clean(html: str) -> str:
    """markdown-it's HTML through the allow-list: what every rendered piece goes through."""
    return nh3.clean(
        html,
        tags=ALLOWED_TAGS,
        attributes=ALLOWED_ATTRIBUTES,
        allowed_classes=ALLOWED_CLASSES,
        url_schemes=URL_SCHEMES,
        link_rel=LINK_REL,
        strip_comments=True,
    )


# What markdown-it's normalize rule counts as a line break (it makes each one a "\n").
_LINE_BREAK = re.compile(r"\r\n?|\n")


@dataclass(frozen=True)
class StreamStep:
    """What one ``StreamRender.step`` changed, as sanitised HTML: the page holds the finished
    blocks, then the open block; ``done`` goes after its finished blocks (in place of all of them
    when ``reset``: an earlier block changed) and ``open`` replaces its open block."""

    reset: bool
    done: str  # finished blocks new since the last step (every finished block when reset)
    open: str  # the open block(s): the text after the finished blocks


class StreamRender:
    """The HTML of a growing markdown text (a streaming answer), rendering each part once.

    ``step(more)`` appends text and returns what changed (``StreamStep``); the finished blocks so far
    (``done_html``) followed by the step's ``open`` equal ``render_markdown(text)``. ``add(more)``
    returns that whole HTML. Only the tail after the blocks already finished is parsed again: a
    top-level block is finished once the next block's first two lines are complete (the second
    decides whether a table starts there), as CommonMark closes a block for good when a later line
    starts another. The one document-wide construct, a link reference definition (``[x]: url``),
    can change any earlier block: once one appears, the whole text is rendered at every step (as
    its open block: the step that finds it resets the finished blocks to none).

    Not thread-safe: the runner calls it from one thread at a time for each reply.
    """

    def __init__(self) -> None:
        self._done: list[str] = []  # the text of the finished blocks
        self._done_html: list[str] = []  # and their HTML, sanitised
        self._tail = ""  # the text after them
        self._whole = False  # a reference definition was seen: render the whole text

    @property
    def text(self) -> str:
        return "".join(self._done) + self._tail

    @property
    def done_html(self) -> str:
        """The finished blocks' HTML (none once the whole text is rendered as one open part)."""
        return "".join(self._done_html)

    def add(self, more: str) -> SafeString:
        step = self.step(more)
        return mark_safe(self.done_html + step.open)  # noqa: S308 - each part sanitised

    def step(self, more: str) -> StreamStep:
        self._tail += more
        if self._whole:
            return StreamStep(False, "", str(render_markdown(self._tail)))
        md, env = _markdown(), {}
        tokens = md.parse(self._tail, env)
        if "references" in env:
            # Every block may change: from now on the text is one open part, rendered whole.
            self._whole = True
            self._tail = "".join(self._done) + self._tail
            self._done, self._done_html = [], []
            return StreamStep(True, "", str(render_markdown(self._tail)))
        # Where each top-level block starts: (token index, line).
        starts = [(i, t.map[0]) for i, t in enumerate(tokens) if t.level == 0 and t.nesting >= 0 and t.map]
        breaks = [m.end() for m in _LINE_BREAK.finditer(self._tail)]  # where lines 1, 2, … start
        finished = 0
        while finished + 1 < len(starts) and starts[finished + 1][1] + 2 <= len(breaks):
            finished += 1
        done = ""
        if finished:
            end_token, end_line = starts[finished]
            new = [
                _clean(md.renderer.render(tokens[a:b], md.options, env))
                for (a, _), (b, _) in zip(starts[:finished], starts[1 : finished + 1], strict=True)
            ]
            self._done_html.extend(new)
            done = "".join(new)
            cut = breaks[end_line - 1]
            self._done.append(self._tail[:cut])
            self._tail = self._tail[cut:]
            tokens = tokens[end_token:]
        return StreamStep(False, done, _clean(md.renderer.render(tokens, md.options, env)))
