"""The smallest FastAPI app on uvicorn: the idle-memory floor of any FastAPI server.

One route (``GET /health``) and FastAPI's own ``/docs`` and ``/openapi.json``, run the
way ``uvicorn app:app`` runs an app: no middleware, no settings, no engine. What it
holds idle is what FastAPI, Starlette, pydantic and uvicorn hold before an app adds
anything; ``bench/idle_memory.py --serve`` reads it beside ``streamapi serve`` and the
raw-ASGI ceiling.

    python bench/servers/fastapi_hello.py --port 8003
"""

from __future__ import annotations

import argparse

import uvicorn
from fastapi import FastAPI

app = FastAPI()


@app.get("/health")
async def health() -> dict[str, str]:
    """The server is up."""
    return {"status": "healthy"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8003)
    args = parser.parse_args()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
