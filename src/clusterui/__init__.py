"""clusterui: a process manager with round-robin dispatch and a terminal dashboard."""

__version__ = "0.1.0"
