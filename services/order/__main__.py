"""``python -m services.order``: run the order service."""

from services.order.app import Settings, create_app
from shared.runtime import serve

if __name__ == "__main__":
    settings = Settings()
    serve(create_app(settings), settings)
