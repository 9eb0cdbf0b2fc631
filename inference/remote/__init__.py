"""The inference worker protocol: web processes send jobs to one model process over a channel
layer. messages.py declares the messages, client.py is the web side (and describes the protocol),
server.py the worker's side; receiving.py the receive loops both use, lock.py the one-worker lock."""
