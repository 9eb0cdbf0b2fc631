"""The live side of a reply: starting it (replies.py, upstream_replies.py), running it while viewers
watch (runner.py, with the Stop listener), and saving its end (saving.py)."""
