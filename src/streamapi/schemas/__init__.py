"""Wire models, one module per protocol: ``openai``, ``responses``, ``anthropic``.

Pure data, no I/O. Request models accept unknown fields, as vLLM does: clients
send vendor extensions that must not be rejected.
"""
