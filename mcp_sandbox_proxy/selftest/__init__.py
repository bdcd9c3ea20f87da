"""``doctor --self-test``: escape probes run in the sandboxes a configuration gives.

``probes`` runs inside a sandbox (standard library only); ``bait`` plants what the
probes reach for and reads the traces on the host; ``run`` builds each server's
sandbox and runs the probes in it; ``judge`` turns their output and the host's
findings into rows; ``report`` prints them and picks the exit status.
"""
