"""Replay of a logged API answer: same prompt ids, parameters, seed and model file; token-by-token
comparison with the first difference highlighted; a changed model file says so. A tiny random
model (greedy and seeded sampling are exact on it)."""

from __future__ import annotations

import json

import pytest
from asgiref.sync import async_to_sync
from django.test import AsyncClient
from django.urls import reverse

from conversations import actions
from conversations.models import Message
from inference.model import ChatModel
from review.models import AuditEntry
from tests.chat_runtime import serving
from tests.review_data import logged_in
from tests.tiny_gguf import write_tiny_llama

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-replay")
    models = []
    for name, seed in (("tiny.gguf", 1), ("other.gguf", 2)):
        path = write_tiny_llama(folder / name, context_length=1024, seed=seed)
        models.append(ChatModel.load(path, cache_dir=folder / "cache", slots=1, threads=1, queue_max=4))
    yield models
    for model in models:
        model.close()


@pytest.fixture
def root(db):
    from django.contrib.auth import get_user_model

    return get_user_model().objects.create_superuser("root", "root@example.com", None)


def api_answer(raw_key: str, **fields) -> Message:
    body = {
        "model": "gpt-3.5-turbo",
        "messages": [{"role": "user", "content": "replay me"}],
        "max_tokens": 12,
    }
    body.update(fields)
    response = async_to_sync(AsyncClient().post)(
        "/v1/chat/completions",
        data=json.dumps(body),
        content_type="application/json",
        headers={"Authorization": f"Bearer {raw_key}"},
    )
    assert response.status_code == 200, response.content
    return Message.objects.filter(role="assistant").order_by("-id").first()


def test_it_replays_a_seeded_answer_token_for_token(tiny_models, root, alice, alpha) -> None:
    _, raw = actions.create_api_key(alice, alpha)
    with serving(tiny_models[0]):
        reply = api_answer(raw, seed=7, temperature=0.9)
        assert len(reply.params["model_sha256"]) == 64 and reply.token_ids
        page = logged_in(root).post(reverse("review:replay", args=[reply.pk])).content.decode()
    assert 'data-status="equal"' in page
    table = page.split('id="replay-tokens"')[1].split("</table>")[0]
    assert table.count("<tr class=") == len(reply.token_ids) and "replay-different" not in table
    assert AuditEntry.objects.filter(action="view", actor=root, filters__replay=reply.pk).exists()
    transcript = logged_in(root).get(
        reverse("admin:conversations_conversation_change", args=[reply.conversation_id])
    )
    assert (
        reverse("review:replay", args=[reply.pk]) in transcript.content.decode()
    )  # linked from the transcript


def test_it_highlights_the_first_difference(tiny_models, root, alice, alpha) -> None:
    _, raw = actions.create_api_key(alice, alpha)
    with serving(tiny_models[0]):
        reply = api_answer(raw, temperature=0)
        changed = list(reply.token_ids)
        changed[2] = (changed[2] + 1) % 200  # as if the engine had drifted from token 2 on
        Message.objects.filter(pk=reply.pk).update(token_ids=changed)
        page = logged_in(root).post(reverse("review:replay", args=[reply.pk])).content.decode()
    assert 'data-status="different"' in page and "differs from token 2 on" in page
    assert page.count('class="replay-first-difference"') == 1


def test_it_says_when_the_model_file_changed(tiny_models, root, alice, alpha) -> None:
    _, raw = actions.create_api_key(alice, alpha)
    with serving(tiny_models[0]):
        reply = api_answer(raw, seed=3)
    with serving(tiny_models[1]):  # another file is served now
        page = logged_in(root).get(reverse("review:replay", args=[reply.pk])).content.decode()
        post = logged_in(root).post(reverse("review:replay", args=[reply.pk])).content.decode()
    assert 'data-status="model_changed"' in page and "The model file changed" in page
    assert 'data-status="model_changed"' in post and "replay-tokens" not in post  # nothing was run


def test_it_refuses_random_sampling_and_other_teams(tiny_models, root, alice, bob, charlie, alpha) -> None:
    _, raw = actions.create_api_key(alice, alpha)
    beta = actions.create_team("beta", admin=charlie)
    charlie.is_staff = True
    charlie.save()
    with serving(tiny_models[0]):
        reply = api_answer(raw, temperature=1)  # no seed
        page = logged_in(root).post(reverse("review:replay", args=[reply.pk])).content.decode()
        assert "sampled at random" in page
        assert logged_in(charlie).get(reverse("review:replay", args=[reply.pk])).status_code == 404
    assert beta.pk


@pytest.mark.model
def test_it_replays_a_seeded_answer_of_the_real_model(root, alice, alpha) -> None:
    from tests.fixtures_model import default_model_cache, default_model_path

    cache = default_model_cache()
    # One thread: two spin-wait for each other and crawl on a busy machine (92 s measured at load 11).
    model = ChatModel.load(default_model_path(), cache_dir=cache, slots=1, threads=1, queue_max=2)
    _, raw = actions.create_api_key(alice, alpha)
    try:
        with serving(model):
            reply = api_answer(raw, seed=11, temperature=0.8, max_tokens=24)
            page = logged_in(root).post(reverse("review:replay", args=[reply.pk])).content.decode()
    finally:
        model.close()
    assert 'data-status="equal"' in page, page.split('id="replay-status"')[1][:300]
