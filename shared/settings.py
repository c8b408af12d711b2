"""Settings every service reads from the environment (pydantic-settings).

Each service subclasses :class:`ServiceSettings` with its own fields; the environment variable of a field is its
name in upper case (``KAFKA_BOOTSTRAP_SERVERS``, ``ORDER_DEADLINE_SECONDS``...). Defaults suit the local stack.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    """What all five services share: where Kafka, the store and Jaeger are, and how to behave on failure."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore", frozen=True)

    service_name: str = "fulfil"
    environment: Literal["development", "test", "production"] = "development"

    http_host: str = "127.0.0.1"
    http_port: int = 8080

    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    # Ready for SASL/TLS: PLAINTEXT locally, SASL_SSL with SCRAM in production.
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: str | None = None

    mongodb_url: str = "mongodb://127.0.0.1:27017"
    mongodb_database: str = ""  # empty: "fulfil_<service>", each service owns its database

    otel_exporter_otlp_endpoint: str = "http://127.0.0.1:4317"
    # Parent-based ratio sampling: 1.0 keeps every trace, 0.1 one in ten (a sampled parent is always followed).
    otel_traces_sampler_arg: float = Field(default=1.0, ge=0.0, le=1.0)
    otel_sdk_disabled: bool = False

    log_level: str = "INFO"
    log_format: Literal["auto", "json", "console"] = "auto"

    # Failure policy of every consumer (shared/consumer.py).
    retry_max_attempts: int = Field(default=6, ge=1)
    retry_initial_delay_seconds: float = Field(default=0.2, gt=0)
    retry_max_delay_seconds: float = Field(default=5.0, gt=0)
    # The hot path: records taken per poll, records in flight per process, producer linger.
    consumer_max_batch: int = Field(default=500, ge=1)
    consumer_max_in_flight: int = Field(default=2000, ge=1)
    kafka_linger_ms: int = Field(default=5, ge=0)

    # API keys for the HTTP APIs (comma-separated); empty disables the check outside production.
    api_keys: SecretStr = SecretStr("")
    # Static API_KEYS are operator keys; storefront (and more operator) keys live hashed in this database's
    # ``api_keys`` collection (``fulfil keys create``). Keys are required when API_KEYS is set, when
    # REQUIRE_API_KEYS is true, and always in production; otherwise a request without a key is let through.
    require_api_keys: bool = False
    api_keys_database: str = "fulfil_order"
    api_key_cache_seconds: float = Field(default=10.0, ge=0)  # how long a revoked key may still pass
    max_body_bytes: int = Field(default=256 * 1024, ge=1024)

    @property
    def static_api_keys(self) -> frozenset[str]:
        """The keys of API_KEYS, blanks dropped (``API_KEYS=","`` configures none)."""
        return frozenset(k.strip() for k in self.api_keys.get_secret_value().split(",") if k.strip())

    @property
    def database(self) -> str:
        return self.mongodb_database or f"fulfil_{self.service_name}"

    @model_validator(mode="after")
    def _refuse_unsafe_production(self) -> ServiceSettings:
        if self.environment == "production":
            if not self.static_api_keys:
                raise ValueError("API_KEYS must be set when ENVIRONMENT=production")
            if any(len(k) < 16 or not k.isascii() for k in self.static_api_keys):
                raise ValueError(
                    "every API_KEYS entry must be at least 16 ASCII characters when ENVIRONMENT=production"
                )
            if self.kafka_security_protocol == "PLAINTEXT":
                raise ValueError("KAFKA_SECURITY_PROTOCOL=PLAINTEXT is refused when ENVIRONMENT=production")
        return self
