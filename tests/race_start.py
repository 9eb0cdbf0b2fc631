"""A web process starting a reply, for tests/conversations/test_one_generation.py's race between two
processes.

``python -m tests.race_start setup``: migrate the database and print a new conversation's id.
``python -m tests.race_start race <conversation id>``: print ``ready``, wait for a line on stdin,
then try to start a reply and print ``{"started": id}`` or ``{"refused": reason}``.
``race-message``: the same with a new message written with its reply (``post_user_message_with_reply``).
"""

from __future__ import annotations

import json
import os
import sys

import django


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    from conversations import actions
    from conversations.models import Conversation

    if sys.argv[1] == "setup":
        call_command("migrate", verbosity=0)
        user = get_user_model().objects.create_user("racer")
        team = actions.create_team("racers", admin=user)
        print(actions.start_conversation(user, team).pk)
        return
    conversation = Conversation.objects.get(pk=int(sys.argv[2]))
    print("ready", flush=True)
    sys.stdin.readline()
    try:
        if sys.argv[1] == "race-message":  # a message admitted first, written with its reply
            author = conversation.owner
            text = f"from process {os.getpid()}"
            _, message = actions.post_user_message_with_reply(
                conversation, text, author, params={}, prompt_tokens=3
            )
        else:
            (message,) = actions.start_assistant_messages(conversation, 1, params={}, prompt_tokens=3)
    except (actions.ReplyInProgress, actions.Busy) as exc:
        print(json.dumps({"refused": str(exc)}), flush=True)
    else:
        print(json.dumps({"started": message.pk}), flush=True)


if __name__ == "__main__":
    main()
