"""The request threads of the ASGI handler (chatsite/threads.py): kept from one request to the next,
never shared by two requests at once, and not handed on while a call of its request still runs."""

from __future__ import annotations

import asyncio
import threading

import pytest
from channels.testing import HttpCommunicator
from django.http import HttpResponse
from django.urls import path

from chatsite.threads import RequestThreads

views_at_once = threading.Barrier(2, timeout=20)
seen: list[int] = []


def both_at_once(request):
    """A sync view that returns only once another request's view has reached this point too."""
    seen.append(threading.get_ident())
    views_at_once.wait()
    return HttpResponse("ok")


def one(request):
    seen.append(threading.get_ident())
    return HttpResponse("ok")


urlpatterns = [path("both/", both_at_once), path("one/", one)]


async def get(url: str) -> dict:
    from chatsite.asgi import application

    communicator = HttpCommunicator(application, "GET", url, headers=[(b"host", b"testserver")])
    response = await communicator.get_response(30)
    await communicator.wait(30)  # the request's end: its thread is given back
    return response


# The kept threads keep their SQLite connections from test to test: these tests allow database access.
@pytest.mark.django_db
@pytest.mark.asyncio
async def test_two_requests_sync_views_run_at_once_in_two_threads(settings) -> None:
    settings.ROOT_URLCONF = __name__
    seen.clear()
    views_at_once.reset()
    responses = await asyncio.gather(get("/both/"), get("/both/"))
    assert [r["status"] for r in responses] == [200, 200]
    assert len(set(seen)) == 2  # neither waited for the other's thread


@pytest.mark.django_db
@pytest.mark.asyncio
async def test_requests_one_after_another_share_one_thread(settings) -> None:
    settings.ROOT_URLCONF = __name__
    seen.clear()
    for _ in range(5):
        assert (await get("/one/"))["status"] == 200
    assert len(set(seen)) == 1


def test_a_thread_is_handed_on_only_once_its_requests_calls_have_run() -> None:
    threads = RequestThreads(kept=1)
    first = threads.take()
    release, running = threading.Event(), threading.Event()
    first.submit(lambda: (running.set(), release.wait(20)))  # a call its request stopped waiting for
    assert running.wait(20)
    threads.give_back(first)
    second = threads.take()
    assert second is not first  # still busy: another thread
    threads.give_back(second)
    assert threads.take() is second
    release.set()
    first.submit(lambda: None).result(20)  # queued after the no-op that hands it back: that has run
    assert threads.take() is first
    assert threads.started == 2
