"""Who may spend what: client keys, model allow-lists and token limits.

``policy`` is the configured data and the pure decisions (which client a key
names, which limits a request counts against, how many tokens it is estimated
at); ``section`` reads it from the config (Plano's ``ratelimits`` and Archway's
``archway.clients`` / ``archway.redis``); ``gate`` applies it to a request
against the shared counters in ``ext_proc.state.shared``.
"""
