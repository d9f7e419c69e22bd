"""The controller's side of the host agent: build the zipapp, deploy it, talk to it."""
