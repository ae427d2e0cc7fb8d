"""Engines: what generates tokens, behind one small protocol (``engines.protocol``).

``simulator`` is the default engine; ``upstream`` proxies an OpenAI-compatible
server; ``dispatch`` sends each request to the engine serving its model;
``factory`` builds the app's engine from its settings.
"""
