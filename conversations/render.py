"""The one render function for untrusted text: user messages, model answers and streaming partials.

markdown-it-py (raw HTML off) → pygments for fenced code → nh3 with an explicit allow-list.
Whatever the text, the result holds no script, no event handler, no ``style``, no ``hx-*``
attribute and no URL with a scheme other than http, https or mailto. Images are never loaded: the
image rule is off, so ``![alt](url)`` becomes a plain link (a remote image URL in model output
could carry data out). Links get ``rel="noopener noreferrer nofollow"``.

The templates put the result inside an element with ``hx-disable``, so even a surviving
attribute could not make htmx act on it.
"""

from __future__ import annotations

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
    html = _markdown().render(text or "")
    clean = nh3.clean(
        html,
        tags=ALLOWED_TAGS,
        attributes=ALLOWED_ATTRIBUTES,
        allowed_classes=ALLOWED_CLASSES,
        url_schemes=URL_SCHEMES,
        link_rel=LINK_REL,
        strip_comments=True,
    )
    return mark_safe(clean)  # noqa: S308 - sanitised just above
