"""A small HTML tree that applies the chat websocket's frames the way htmx does (each top-level
element of a frame swapped out of band by its ``hx-swap-oob``), for tests that compare what a page
ends up showing with a render of the whole text, without a browser. It knows the swaps the consumer
sends: ``true``/``outerHTML``, ``innerHTML`` (the element's own id), ``beforebegin:#id``,
``beforeend:#id`` and ``delete``. The browser tests check the same on the real htmx."""

from __future__ import annotations

from functools import lru_cache
from html import escape
from html.parser import HTMLParser

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class Element:
    def __init__(self, tag: str, attrs: dict[str, str | None]) -> None:
        self.tag, self.attrs = tag, attrs
        self.children: list[Element | str] = []

    def html(self) -> str:
        """The children as HTML (an element's innerHTML)."""
        return "".join(escape(c, quote=False) if isinstance(c, str) else c.outer() for c in self.children)

    def outer(self) -> str:
        attrs = "".join(f' {k}="{escape(v or "")}"' for k, v in self.attrs.items())
        if self.tag in VOID:
            return f"<{self.tag}{attrs}>"
        return f"<{self.tag}{attrs}>{self.html()}</{self.tag}>"

    def find(self, element_id: str) -> tuple[Element, int] | None:
        """(parent, index) of the element whose id is ``element_id``, depth first."""
        for i, child in enumerate(self.children):
            if isinstance(child, Element):
                if child.attrs.get("id") == element_id:
                    return self, i
                found = child.find(element_id)
                if found is not None:
                    return found
        return None


class _Builder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("#root", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, dict(attrs))
        self.stack[-1].children.append(element)
        if tag not in VOID:
            self.stack.append(element)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.stack[-1].children.append(Element(tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        while len(self.stack) > 1:
            if self.stack.pop().tag == tag:
                return

    def handle_data(self, data: str) -> None:
        children = self.stack[-1].children
        if children and isinstance(children[-1], str):
            children[-1] += data
        else:
            children.append(data)


def parse(html: str) -> Element:
    """``html`` as the children of a root element."""
    builder = _Builder()
    builder.feed(html)
    builder.close()
    return builder.root


def normal(html: str) -> str:
    """``html`` through this parser and back: the form two pieces of HTML are compared in."""
    return _normal(str.__str__(html))  # a plain str (not a SafeString): equal HTML, one cache key


@lru_cache(maxsize=16)
def _normal(html: str) -> str:
    """Remembered for the last few: a test comparing a growing page with the whole render at each
    step normalises the same HTML (the render, then each page showing it) several times a step."""
    return parse(html).html()


class Page:
    """A page's tree, changed by websocket frames."""

    def __init__(self, html: str) -> None:
        self.root = parse(html)
        self.missed: list[str] = []  # the targets of swaps that were not on the page

    def apply(self, frame: str) -> None:
        for element in [c for c in parse(frame).children if isinstance(c, Element)]:
            swap = element.attrs.pop("hx-swap-oob", None) or "true"
            style, _, selector = swap.partition(":")
            target_id = selector.removeprefix("#") if selector else element.attrs.get("id")
            found = self.root.find(target_id or "")
            if found is None:  # htmx does nothing then (an htmx:oobErrorNoTarget event)
                self.missed.append(f"#{target_id} ({swap})")
                continue
            parent, i = found
            target = parent.children[i]
            assert isinstance(target, Element)
            if style in ("true", "outerHTML"):
                parent.children[i] = element
            elif style == "innerHTML":
                target.children = element.children
            elif style == "beforebegin":
                parent.children[i:i] = element.children
            elif style == "beforeend":
                target.children.extend(element.children)
            elif style == "delete":
                del parent.children[i]
            else:
                raise AssertionError(f"a swap this helper does not know: {swap!r}")

    def inner(self, element_id: str, unwrap: str | None = None) -> str:
        """The innerHTML of ``#element_id``, normalised (``normal``); with the element of id
        ``unwrap`` inside it replaced by its children (a streaming answer's open block)."""
        found = self.root.find(element_id)
        assert found is not None, f"no #{element_id}"
        element = found[0].children[found[1]]
        assert isinstance(element, Element)
        spot = element.find(unwrap) if unwrap is not None else None
        if spot is None:
            return normal(element.html())
        # Written with the wrapper's children in its place, then put back: the page is unchanged.
        parent, i = spot
        wrapper = parent.children[i]
        assert isinstance(wrapper, Element)
        parent.children[i : i + 1] = wrapper.children
        try:
            return normal(element.html())
        finally:
            parent.children[i : i + len(wrapper.children)] = [wrapper]
