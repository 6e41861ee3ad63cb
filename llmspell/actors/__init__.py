"""Actors: the director (root of the tree), scheduler, event bus, coordinator
and aggregators, resource tracker and registry.

Internal: users never import this package. It may import ``messages``,
``engines``, ``supervisors`` and the shared base (``_actor``, ``_clock``,
``_task``, ``_exceptions``); nothing below it imports it.
"""
