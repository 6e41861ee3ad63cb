"""Actors: the director (root of the tree), scheduler, event bus, coordinator
and aggregators, resource tracker and registry.

Internal: users never import this package. It may import ``messages``,
``engines``, ``supervisors``, ``table``, the workflow loader (``workflow``) and
the shared base (``_actor``, ``_clock``, ``_exceptions``), never the facade
(``_runtime``, ``_task``); nothing below it imports it.
"""
