"""The console's settings: the services' shared ones (Kafka, keys, store) plus its own."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, model_validator

from shared import keys
from shared.settings import ServiceSettings, is_placeholder
from tools.ops.audit import AUDIT_LOG

REPO = Path(__file__).resolve().parents[2]


class ConsoleSettings(ServiceSettings):
    """``CONSOLE_*`` and the usual service variables; defaults suit the local stack."""

    service_name: str = "console"
    http_port: int = 8090
    jaeger_query_url: str = "http://127.0.0.1:16686"
    # The Jaeger UI to link an order's trace to; empty where none runs (the local binary has no UI).
    jaeger_ui_url: str = ""
    stuck_after_seconds: float = Field(default=600.0, gt=0)
    refresh_seconds: float = Field(default=2.0, ge=0.5)
    # Without API_KEYS the console still wants an operator key: one is made once and kept in this file (0600).
    console_key_file: Path = REPO / ".local" / "console" / "operator-key"
    audit_log: Path = AUDIT_LOG  # the same log `fulfil` writes to
    # The login cookie is Secure in production and over HTTPS; set this where a TLS proxy speaks HTTP to us.
    cookie_secure: bool = False
    # A scrape-only credential for /metrics (Prometheus: Authorization: Bearer); empty: operators only.
    metrics_token: SecretStr = SecretStr("")

    @model_validator(mode="after")
    def _refuse_weak_metrics_token(self) -> ConsoleSettings:
        token = self.metrics_token.get_secret_value()
        if token and self.environment == "production" and (len(token) < 16 or is_placeholder(token)):
            raise ValueError("METRICS_TOKEN must be a random value of at least 16 characters in production")
        return self

    def operator_keys(self) -> frozenset[str]:
        """API_KEYS, or else the local key file's key (created on first use): the console never runs open."""
        if self.static_api_keys:
            return self.static_api_keys
        path = self.console_key_file
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch(mode=0o600)
            path.write_text(keys.new_token() + "\n")
        return frozenset({path.read_text().strip()})
