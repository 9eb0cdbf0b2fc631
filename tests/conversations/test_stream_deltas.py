"""A streaming answer reaches the page as deltas of what changed (conversations/live/runner.py and
consumers.delta_fragment): the blocks finished since the last delta, appended, and the open block,
replaced. Applied in order (tests/oob_dom.py, as htmx swaps them), they leave the answer's body
equal to the whole text rendered at once, at every delta; a viewer who joins mid-answer gets the
whole answer so far once, then the deltas; and a delta's size does not grow with the answer."""

from __future__ import annotations

import asyncio
import threading

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator

from chatsite.asgi import application
from conversations import actions
from conversations.consumers import delta_fragment
from conversations.live import runner
from conversations.render import StreamRender, render_markdown
from inference.jobs import Delta, Finished, Job, Started, Timings, Usage
from inference.sampling import SamplingParams
from tests.oob_dom import Page, normal
from tests.ws_chat import FIRST_FRAME, HOST, ORIGIN, cookie_for, finish_run

MID = 7
BODY = f'<div id="m-{MID}-body" class="msg-body" hx-disable>{{}}</div>'
ANSWERS = {
    "code fences": (
        "Here is the code:\n\n```python\ndef double(x):\n    # twice\n    return x * 2\n```\n\n"
        "And a plain one:\n\n```\n<b>not bold</b>\n\n\nwith blank lines\n```\nAfter the fence.\n"
    ),
    "lists": (
        "Steps:\n\n- one\n- two\n  - nested *em*\n  - another\n- three\n\n1. first\n2. second\n\n"
        "3. loose\n\n   continued\n\n* star\n+ plus\n\nThe end."
    ),
    "tables": (
        "| name | value |\n| :--- | ---: |\n| a | 1 |\n| b | `2` |\nrow without pipes\n\n"
        "Between tables.\n\n| only | header |\n\nFoo\n| x | y |\n| - | - |\n| 1 | 2 |\n"
    ),
    "headings": (
        "# Title\n\nIntro with **bold**.\n## Section *one*\nBody text.\n\nSetext heading\n===\n\n"
        "Another\n---\n\n### Three\n\n---\n\n> quoted\nlazy continuation\n\n#### Four"
    ),
    "untrusted": (
        "<script>alert(1)</script>\n\n[link](javascript:alert(1)) and [ok](https://example.org)\n\n"
        '![img](https://evil.example/x.png)\n\n<img src=x onerror="alert(1)">\n\n`<i>` done'
    ),
    "a late reference": (
        "See [x] and [y][x].\n\nMore text.\n\n- a list\n\n[x]: https://example.org\n\nAfter it.\n"
    ),
}


def cut(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def whole(text: str) -> str:
    return normal(str(render_markdown(text)))


def shown(page: Page) -> str:
    return page.inner(f"m-{MID}-body", unwrap=f"m-{MID}-open")


@pytest.mark.parametrize("name", ANSWERS)
@pytest.mark.parametrize("size", [1, 3, 7, 16, 40])
def test_the_deltas_applied_in_order_equal_the_whole_render(name: str, size: int) -> None:
    stream, page, text = runner.Stream(1), Page(BODY.format("")), ""
    late: Page | None = None
    parts = cut(ANSWERS[name], size)
    for i, part in enumerate(parts):
        text += part
        event = stream.delta(runner._render(stream, part))
        page.apply(delta_fragment(MID, event))
        assert shown(page) == whole(text), (i, text)
        if late is not None:
            late.apply(delta_fragment(MID, event))
            assert shown(late) == whole(text), (i, text)
        if i == len(parts) // 2:
            # A viewer joins: the page shows the saved text (a prefix), then the whole answer so far.
            late = Page(BODY.format(render_markdown(text[: len(text) // 3])))
            late.apply(delta_fragment(MID, stream.whole()))
            assert shown(late) == whole(text)
    assert stream.seq == len(parts) and page.missed == [] and late is not None and late.missed == []


def test_the_deltas_stay_small_as_the_answer_grows() -> None:
    stream, sizes = runner.Stream(1), []
    for i in range(300):
        event = stream.delta(runner._render(stream, f"Paragraph {i:03} of a long answer, *more* text.\n\n"))
        sizes.append(len(delta_fragment(MID, event)))
    assert max(sizes[-50:]) <= max(sizes[1:51])


def test_after_a_failed_render_the_next_delta_puts_every_block_back(monkeypatch) -> None:
    stream, page, text = runner.Stream(1), Page(BODY.format("")), ""
    step = StreamRender.step
    for i, part in enumerate(cut(ANSWERS["code fences"], 9)):
        text += part
        if i == 5:

            def broken(self, more):
                self._tail += more
                raise RuntimeError("a renderer bug")

            monkeypatch.setattr(StreamRender, "step", broken)
        event = stream.delta(runner._render(stream, part))
        monkeypatch.setattr(StreamRender, "step", step)
        page.apply(delta_fragment(MID, event))
        if i == 5:
            assert event["reset"] and shown(page) == normal(f"<p>{text}</p>".replace("<b>", "&lt;b&gt;"))
        else:
            assert shown(page) == whole(text), (i, text)


# --- through the real consumer ---------------------------------------------------------------------


async def open_page(user, conversation_id: int) -> tuple[WebsocketCommunicator, Page]:
    """A viewer's socket, and its page as the connection's first frame (the conversation) made it."""
    headers = [HOST, ORIGIN, await sync_to_async(cookie_for)(user)]
    communicator = WebsocketCommunicator(application, f"/ws/c/{conversation_id}/", headers=headers)
    connected, _ = await communicator.connect()
    assert connected
    page = Page('<div id="messages"></div><div id="chat-error"></div>')
    page.apply(await communicator.receive_from(timeout=FIRST_FRAME))
    return communicator, page


async def frames_until(communicator, needle: str, timeout: float = 10) -> list[str]:
    frames = []
    while True:
        frames.append(await communicator.receive_from(timeout=timeout))
        if needle in frames[-1]:
            return frames


async def until(condition, timeout: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_viewer_gets_bounded_deltas_and_a_late_one_the_whole_answer_first(
    alice, bob, chat, monkeypatch
) -> None:
    """A 200-paragraph answer from a job fed here, one paragraph per delta, through the real runner
    and two real consumers: the bytes of each delta frame stay the same from the first paragraphs to
    the last (before, each delta sent the whole answer), and a viewer who connects at paragraph 120
    is sent the whole answer so far, then the deltas; both pages equal the whole render throughout."""
    monkeypatch.setattr(runner, "PUBLISH_INTERVAL", 0.0)  # a delta per paragraph
    monkeypatch.setattr(runner, "PUBLISH_PIECES", 1)
    first, first_page = await open_page(alice, chat.pk)
    (reply,) = await sync_to_async(actions.start_assistant_messages)(chat, 1, params={}, prompt_tokens=1)
    for frame in await frames_until(first, f'id="m-{reply.pk}"'):  # the new (empty) answer
        first_page.apply(frame)
    job = Job([1, 2], SamplingParams(max_tokens=1000), "t", 1000)
    run = runner.start(chat.pk, [job], [reply])
    job.emit(Started(cached_tokens=0))
    sockets, pages = {"first": first}, {"first": first_page}
    body, open_ = f"m-{reply.pk}-body", f"m-{reply.pk}-open"
    sizes: list[int] = []
    text = ""
    for i in range(200):
        paragraph = f"Paragraph {i:03} of a long answer, with *some* `markup` in it.\n\n"
        text += paragraph
        job.emit(Delta(paragraph, (1,)))
        expected = whole(text)
        for who, socket in sockets.items():
            if who == "late" and i < 122:
                continue  # asking for the whole answer (below): nothing reaches its page meanwhile
            for frame in await frames_until(socket, f"Paragraph {i:03} "):
                pages[who].apply(frame)
                if who == "first" and open_ in frame:
                    sizes.append(len(frame.encode()))
            assert pages[who].inner(body, unwrap=open_) == expected, (who, i)
        if i == 120:
            sockets["late"], pages["late"] = await open_page(bob, chat.pk)  # the saved text, a prefix
        if i == 121:  # the late page got a delta it cannot apply: it asked for the whole answer
            await until(lambda: runner._streams[reply.pk].waiting)
    assert len(sizes) == 200  # a delta per paragraph
    assert pages["first"].missed == pages["late"].missed == []
    assert max(sizes[-50:]) <= max(sizes[1:51])
    usage, timings = Usage(2, 200), Timings(0.0, 0.01, 0.0, 1.0, 0, 2, None)
    job.emit(Finished("stop", usage, timings, text, None))
    await run.wait()
    await finish_run(chat.pk)
    for socket in sockets.values():
        await socket.disconnect()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_viewer_out_of_step_drops_deltas_until_the_whole_answer_and_asks_once(
    alice, chat, monkeypatch
) -> None:
    asked: list[int] = []

    async def ask(conversation_id, message_id, channel):
        asked.append(message_id)

    monkeypatch.setattr(runner, "request_whole", ask)
    (reply,) = await sync_to_async(actions.start_assistant_messages)(chat, 1, params={}, prompt_tokens=1)
    viewer, page = await open_page(alice, chat.pk)
    layer, group = runner.get_channel_layer(), actions.group_name(chat.pk)
    delta = {"type": "chat.delta", "message_id": reply.pk, "choice_index": 0, "text": "x"}
    for seq in range(5, 9):  # deltas of a reply whose earlier ones this page never got
        await layer.group_send(
            group, delta | {"seq": seq, "reset": False, "done": "", "open": f"<p>{seq}</p>"}
        )
    whole_so_far = {"seq": 8, "reset": True, "done": "<p>a</p>", "open": "<p>8</p>"}
    await layer.group_send(group, {"type": "chat.whole", "message_id": reply.pk} | whole_so_far)
    await layer.group_send(group, delta | {"seq": 9, "reset": False, "done": "<p>8</p>", "open": "<p>9</p>"})
    frames = await frames_until(viewer, "<p>9</p>")
    assert len(frames) == 2 and frames[0].startswith(f'<div id="m-{reply.pk}-body" hx-swap-oob="innerHTML">')
    for frame in frames:
        page.apply(frame)
    assert page.inner(f"m-{reply.pk}-body", unwrap=f"m-{reply.pk}-open") == normal("<p>a</p><p>8</p><p>9</p>")
    assert asked == [reply.pk]
    await viewer.disconnect()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_delta_reaches_the_viewer_while_the_database_thread_is_busy(alice, chat) -> None:
    """Forwarding a delta needs no database: it must not wait for the thread that serves every
    request's database work (channels' dispatch closed old connections there first, for every
    viewer at every delta: a thread hop each, and a stalled stream while that thread is busy)."""
    (reply,) = await sync_to_async(actions.start_assistant_messages)(chat, 1, params={}, prompt_tokens=1)
    viewer, _ = await open_page(alice, chat.pk)
    started, release = threading.Event(), threading.Event()

    def slow_query() -> None:  # another request's database work, holding the thread
        started.set()
        release.wait(30)

    busy = asyncio.ensure_future(sync_to_async(slow_query, thread_sensitive=True)())
    try:
        await until(started.is_set)
        delta = {"type": "chat.delta", "message_id": reply.pk, "choice_index": 0, "text": "Hi"}
        html = {"seq": 1, "reset": True, "done": "", "open": "<p>Hi</p>"}
        await runner.get_channel_layer().group_send(actions.group_name(chat.pk), delta | html)
        frame = await viewer.receive_from(timeout=10)
        assert f'id="m-{reply.pk}-body"' in frame and "<p>Hi</p>" in frame
        assert not busy.done()
    finally:
        release.set()
        await busy
    await viewer.disconnect()
