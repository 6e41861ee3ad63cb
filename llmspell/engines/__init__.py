"""Engines: the python, lua and js engine context actors, the VMs they drive
(``lua_vm``, ``js_vm``, the ``_vm`` contract) and the scripts' host API.

Internal: users never import this package. It may import ``messages`` and the
shared base (``_actor``, ``_clock``, ``_task``, ``_exceptions``, ``_context``);
it never imports ``actors``, ``supervisors`` or the facade.
"""
