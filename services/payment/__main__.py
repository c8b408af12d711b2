"""``python -m services.payment``: run the payment service."""

from services.payment.app import Settings, create_app
from shared.runtime import serve

if __name__ == "__main__":
    settings = Settings()
    serve(create_app(settings), settings)
