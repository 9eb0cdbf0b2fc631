"""Data for the review tests, made through the services (no model needed).

The people: root (superuser); alice, admin of team alpha; bob, a plain member of alpha; charlie,
admin of team beta (an outsider to alpha). alice, bob and charlie are all ``is_staff``: the
review admin must not care, since is_staff only opens the door.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.test import Client
from django.utils import timezone

from conversations import actions
from conversations.models import ApiKey, Conversation, Message, Team


@dataclass
class World:
    root: Any
    alice: Any
    bob: Any
    charlie: Any
    alpha: Team
    beta: Team
    keys: dict[str, ApiKey] = field(default_factory=dict)
    conversations: dict[str, Conversation] = field(default_factory=dict)

    def user(self, role: str) -> Any:
        return None if role == "anonymous" else getattr(self, role)


def api_call(
    key: ApiKey,
    prompt: str,
    answers: list[str],
    *,
    request_user: str = "",
    prompt_tokens: int = 12,
    model_id: str = "SmolLM2-135M-Instruct",
    status: str = Message.Status.COMPLETE,
) -> Conversation:
    """A logged /v1/chat/completions call with len(answers) finished choices."""
    call = actions.start_api_call(
        key,
        model_id=model_id,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": prompt}],
        params={"temperature": 0.7, "top_p": 0.9, "max_tokens": 32, "seed": 7, "n": len(answers)},
        n=len(answers),
        prompt_tokens=prompt_tokens,
        request_user=request_user,
    )
    for reply, answer in zip(call.replies, answers, strict=True):
        actions.finish_assistant_message(
            reply.pk,
            actions.Outcome(
                status=status,
                content=answer,
                finish_reason="stop",
                token_ids=[1, 2, 3],
                prompt_tokens=prompt_tokens,
                completion_tokens=len(answer.split()),
                queue_wait=0.01,
                ttft=0.25,
                duration=1.5,
            ),
        )
    return call.conversation


def web_chat(
    owner: Any, team: Team, prompt: str, answer: str, *, visibility: str = "private"
) -> Conversation:
    conversation = actions.start_conversation(owner, team, title=prompt[:40], visibility=visibility)
    actions.add_user_message(conversation, prompt)
    reply = actions.start_assistant_messages(conversation, 1, params={"temperature": 0.2}, prompt_tokens=5)[0]
    actions.finish_assistant_message(
        reply.pk,
        actions.Outcome(
            status="complete", content=answer, prompt_tokens=5, completion_tokens=3, duration=0.4
        ),
    )
    return conversation


def build_world(alice: Any, bob: Any, charlie: Any, alpha: Team) -> World:
    User = get_user_model()
    root = User.objects.create_superuser("root", "root@example.com", None)  # no hashing: fast
    for user in (alice, bob, charlie):
        user.is_staff = True
        user.save(update_fields=["is_staff"])
    beta = actions.create_team("beta", admin=charlie)
    world = World(root=root, alice=alice, bob=bob, charlie=charlie, alpha=alpha, beta=beta)
    world.keys = {
        "alice": actions.create_api_key(alice, alpha, "alice's script")[0],
        "bob": actions.create_api_key(bob, alpha, "bob's script")[0],
        "charlie": actions.create_api_key(charlie, beta, "charlie's script")[0],
    }
    c = world.conversations
    c["bob_api"] = api_call(world.keys["bob"], "Name a colour", ["Blue."], request_user="user-42")
    c["bob_private"] = web_chat(bob, alpha, "my private question", "private answer")
    c["bob_shared"] = web_chat(bob, alpha, "a shared question", "shared answer", visibility="team")
    c["bob_deleted"] = web_chat(bob, alpha, "a deleted question", "deleted answer", visibility="team")
    Conversation.objects.filter(pk=c["bob_deleted"].pk).update(deleted_at=timezone.now() - timedelta(hours=1))
    c["charlie_api"] = api_call(world.keys["charlie"], "Beta secret plans", ["Nothing to see."])
    for conversation in c.values():
        conversation.refresh_from_db()
    return world


# What each role sees of alpha (by the names above) in the conversation list, policy off.
ALPHA = {"bob_api", "bob_private", "bob_shared", "bob_deleted"}
ALPHA_REVIEWABLE = ALPHA - {"bob_private"}


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client
