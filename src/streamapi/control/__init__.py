"""Test control: scripted answers, injected faults, counted rate limits and a request journal.

``rules`` (what to answer to which request), ``faults`` (errors before the
stream and breakage during it), ``ratelimit`` (requests and tokens per minute),
``journal`` (the last requests, for assertions), ``hooks`` (``Control``, where
they meet the serving path) and ``middleware`` (journal entries and rate-limit
headers on every generation response). ``api.admin`` changes them at runtime.
"""
