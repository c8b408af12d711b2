"""``python -m services.inventory``: run the inventory service."""

from services.inventory.app import Settings, create_app
from shared.runtime import serve

if __name__ == "__main__":
    settings = Settings()
    serve(create_app(settings), settings)
