"""Where a request is decided: the provider catalog, model resolution, session pins and the request
plan. Pure; no I/O, no protobufs.
"""
