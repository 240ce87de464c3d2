"""The ext_proc server: one processor per Envoy stream role, the protobufs it answers with, health,
reload and worker processes.
"""
