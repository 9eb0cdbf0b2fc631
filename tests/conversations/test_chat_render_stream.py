"""Rendering a streaming answer once per reply, a block at a time (``StreamRender``): at every
delta boundary its HTML equals ``render_markdown`` of the whole text so far, for generated markdown
with code fences, lists, tables, quotes, headings and the constructs whose meaning a later line
can change (setext underlines, table delimiter rows, lazy continuations, reference definitions)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conversations.render import StreamRender, render_markdown

WORDS = ["alpha", "*em*", "**strong**", "`code`", "[link](https://example.org)", "~~gone~~", "x | y", "<b>"]
BLOCKS = [
    "# Heading",
    "## Sub *heading*",
    "A paragraph with **bold** and `code`.",
    "Setext heading\n===",
    "Another\n---",
    "---",
    "***",
    "- one\n- two\n- three",
    "- loose\n\n- list",
    "1. first\n2. second",
    "3. starts at three",
    "- outer\n  - inner\n    - deeper",
    "- item\n\n  continued paragraph",
    "> quoted\nlazy continuation",
    "> quote\n>\n> - in a list",
    "| a | b |\n| - | - |\n| 1 | 2 |",
    "| h1 | h2 |\n|:--|--:|\n| x | y |\nrow without pipes",
    "| only | header |",
    "| a | b |\n| - | - | - |",
    "```python\ndef f(x):\n    return x * 2\n```",
    "```\nplain fence\n\n\nwith blank lines\n```",
    "~~~js\nlet a = 1;\n~~~",
    "```unclosed\ncode runs on",
    "````\n```\nnested fence\n```\n````",
    "    indented code\n    more",
    "[ref]: https://example.org/ref",
    "See [ref] and [other][ref].",
    "<script>alert(1)</script>",
    "Text\r\nwith CRLF\r\n",
    "a\\\nhard break",
    "* star list\n+ plus list",
    "   ",
]

words = st.lists(st.sampled_from(WORDS), min_size=1, max_size=6).map(" ".join)
block = st.one_of(st.sampled_from(BLOCKS), words)
separator = st.sampled_from(["\n\n", "\n", "\n\n\n", "\n  \n"])


@st.composite
def documents(draw) -> str:
    blocks = draw(st.lists(block, min_size=1, max_size=8))
    text = blocks[0]
    for b in blocks[1:]:
        text += draw(separator) + b
    return text + draw(st.sampled_from(["", "\n", "\n\n"]))


@st.composite
def deltas(draw) -> list[str]:
    """A document cut into deltas of 1 to 12 characters (as the runner coalesces tokens)."""
    text = draw(documents())
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(text) - 1)), max_size=len(text)))))
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


def assert_streams_as_whole(parts: list[str]) -> None:
    render, text = StreamRender(), ""
    for part in parts:
        text += part
        assert str(render.add(part)) == str(render_markdown(text)), text


# Cuts that once broke the streaming render; each runs in every test run, fast or not.
HARD_CUTS = [
    ["Foo\n| a | b |\n| - | -", " | - |\n"],  # a delimiter row that stops being one
    ["Foo\n```", "a`\n"],  # a fence opener that stops being one
    ["Foo\n***", "a\n"],
    ["[x]\n\nmore\n\n", "[x]: https://example.org\n"],  # a late reference definition
]


@pytest.mark.parametrize("parts", HARD_CUTS)
def test_it_renders_the_hard_cuts_as_the_whole_text(parts: list[str]) -> None:
    assert_streams_as_whole(parts)


@pytest.mark.parametrize("block", BLOCKS)
def test_it_renders_each_kind_of_block_a_character_at_a_time_as_the_whole_text(block: str) -> None:
    assert_streams_as_whole(list(f"Before it.\n\n{block}\n\nAfter it.\n"))


@pytest.mark.slow  # 400 generated documents, each rendered whole at every cut
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(deltas())
def test_it_renders_every_delta_as_the_whole_text(parts: list[str]) -> None:
    assert_streams_as_whole(parts)


@pytest.mark.slow  # 60 generated documents, each rendered whole at every character
@settings(max_examples=60, deadline=None)
@given(documents())
def test_it_renders_a_character_at_a_time_as_the_whole_text(text: str) -> None:
    assert_streams_as_whole(list(text))


def test_it_keeps_finished_blocks_and_parses_only_the_open_one() -> None:
    render = StreamRender()
    for i in range(50):
        render.add(f"Paragraph {i} of a long answer.\n\n")
    assert len(render._tail) < 100  # the 48 first paragraphs are finished and not parsed again
    assert str(render.add("Last.")) == str(render_markdown(render.text))


def test_a_render_that_fails_shows_the_text_escaped_instead_of_ending_the_reply(monkeypatch, caplog) -> None:
    """A renderer bug must not stop the reply being streamed and saved: the runner's render step
    logs it and the viewers get the text so far, escaped (in place of every block)."""
    from conversations.live import runner

    def broken(self, more):
        self._tail += more
        raise RuntimeError("a renderer bug")

    stream = runner.Stream(1)
    monkeypatch.setattr(StreamRender, "step", broken)
    step = runner._render(stream, "<b>bold?</b>")
    assert step.reset and (step.done, step.open) == ("", "<p>&lt;b&gt;bold?&lt;/b&gt;</p>")
    assert "could not render" in caplog.text
