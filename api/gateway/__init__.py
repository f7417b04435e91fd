"""The gateway: forwards agents' requests to real APIs, attaching secrets agents never hold."""
