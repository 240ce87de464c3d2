"""Archway: an Envoy ext_proc server that routes LLM traffic. The ``archway`` command is cli.py.

A regular package, not a namespace one: ``py.typed`` applies to every subpackage, and no other
``ext_proc`` directory on ``sys.path`` can merge into this one.
"""
