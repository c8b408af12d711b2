"""``python -m services.shipping``: run the shipping service."""

from services.shipping.app import Settings, create_app
from shared.runtime import serve

if __name__ == "__main__":
    settings = Settings()
    serve(create_app(settings), settings)
