"""streamapi: an OpenAI-compatible streaming LLM API server."""

__version__ = "0.1.0"
