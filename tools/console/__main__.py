"""``python -m tools.console``: run the ops console (http://127.0.0.1:8090 by default)."""

import uvicorn

from shared import logging as shared_logging
from tools.console.app import create_app
from tools.console.settings import ConsoleSettings

if __name__ == "__main__":
    settings = ConsoleSettings()
    shared_logging.configure(settings)
    uvicorn.run(
        create_app(settings),
        host=settings.http_host,
        port=settings.http_port,
        log_level="warning",
        access_log=False,
        loop="asyncio",
    )
