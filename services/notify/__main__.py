"""``python -m services.notify``: run the notify service."""

from services.notify.app import Settings, create_app
from shared.runtime import serve

if __name__ == "__main__":
    settings = Settings()
    serve(create_app(settings), settings)
