"""The inference worker protocol: web processes send jobs to one model process over a channel
layer (client.py), which runs them (server.py). See client.py for the messages."""
