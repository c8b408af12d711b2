"""Settings every service reads from the environment (pydantic-settings).

Each service subclasses :class:`ServiceSettings` with its own fields; the environment variable of a field is its
name in upper case (``KAFKA_BOOTSTRAP_SERVERS``, ``ORDER_DEADLINE_SECONDS``...). Defaults suit the local stack.
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import parse_qs, urlsplit

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# The value every secret of deploy/k8s/secret.yaml starts as: production refuses to run with one left in place.
PLACEHOLDER = "CHANGE-ME"
# Store URL options that switch off the verification of the store's certificate (or of its host name): refused in
# production, where they would make tls=true encrypt to whoever answers.
INSECURE_STORE_TLS = ("tlsInsecure", "tlsAllowInvalidCertificates", "tlsAllowInvalidHostnames")


def is_placeholder(secret: str) -> bool:
    """Whether ``secret`` is (or contains) the template's placeholder, in any case."""
    return PLACEHOLDER.lower() in secret.lower()


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
    kafka_ssl_cafile: str | None = None  # None: the system's CAs (a broker certificate from a public CA)

    mongodb_url: str = "mongodb://127.0.0.1:27017"
    mongodb_database: str = ""  # empty: "fulfil_<service>", each service owns its database

    otel_exporter_otlp_endpoint: str = "http://127.0.0.1:4317"
    # TLS to the collector: an https:// endpoint, or OTEL_EXPORTER_OTLP_INSECURE=false (the OpenTelemetry variables);
    # the certificate is the CA file that signed the collector's (None: the system's CAs).
    otel_exporter_otlp_insecure: bool | None = None
    otel_exporter_otlp_certificate: str | None = None
    # Production refuses spans in plaintext unless this says the path is private (e.g. a collector on localhost).
    otlp_allow_plaintext: bool = False
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
    # How long an event that came before what it follows (NotYet: e.g. a payment before its placement, after a
    # restore) waits for it before it becomes a dead letter.
    consumer_wait_for_prior_seconds: float = Field(default=300.0, ge=0)

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

    @property
    def otlp_uses_tls(self) -> bool:
        """As the OTLP exporter decides: https:// is TLS; otherwise OTEL_EXPORTER_OTLP_INSECURE=false asks for it."""
        if urlsplit(self.otel_exporter_otlp_endpoint).scheme == "https":
            return True
        if self.otel_exporter_otlp_insecure is not None:
            return not self.otel_exporter_otlp_insecure
        return urlsplit(self.otel_exporter_otlp_endpoint).scheme not in ("http", "")

    @model_validator(mode="after")
    def _refuse_unsafe_production(self) -> ServiceSettings:
        if self.environment == "production":
            if not self.static_api_keys:
                raise ValueError("API_KEYS must be set when ENVIRONMENT=production")
            if any(len(k) < 16 or not k.isascii() for k in self.static_api_keys):
                raise ValueError(
                    "every API_KEYS entry must be at least 16 ASCII characters when ENVIRONMENT=production"
                )
            if any(is_placeholder(k) for k in self.static_api_keys):
                raise ValueError(
                    f"API_KEYS holds the placeholder of deploy/k8s/secret.yaml ({PLACEHOLDER}...): replace it with "
                    "a random key (e.g. `openssl rand -base64 32`) when ENVIRONMENT=production"
                )
            if problems := self.transport_problems():
                raise ValueError("; ".join(problems) + " when ENVIRONMENT=production")
        return self

    def transport_problems(self) -> list[str]:
        """What production refuses about the connections to Kafka, the store and the trace collector."""
        problems = []
        proto = self.kafka_security_protocol
        if proto != "SASL_SSL":
            # PLAINTEXT and SASL_PLAINTEXT are unencrypted; SSL alone authenticates nobody (no client certificates).
            problems.append(f"KAFKA_SECURITY_PROTOCOL={proto} is refused: use SASL_SSL")
        if proto.startswith("SASL"):
            if self.kafka_sasl_mechanism in (None, "PLAIN"):
                problems.append("KAFKA_SASL_MECHANISM must be SCRAM-SHA-256 or SCRAM-SHA-512 (PLAIN is refused)")
            if not self.kafka_sasl_username or not self.kafka_sasl_password:
                problems.append("KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD must be set")
        # KAFKA_SSL_CAFILE may stay unset: then the system's CAs verify the broker (a public CA's certificate).
        store = urlsplit(self.mongodb_url)
        if not store.username or not store.password:
            problems.append("MONGODB_URL must carry credentials (mongodb://user:password@host/...)")
        query = {k.lower(): v[-1].lower() for k, v in parse_qs(store.query).items()}
        tls = query.get("tls", query.get("ssl", "true" if store.scheme == "mongodb+srv" else "false"))
        if tls != "true":
            problems.append("MONGODB_URL must ask for TLS (tls=true)")
        for option in INSECURE_STORE_TLS:
            if query.get(option.lower(), "false") != "false":
                problems.append(
                    f"MONGODB_URL sets {option}: the store's certificate would not be verified (remove it; give the "
                    "CA with tlsCAFile)"
                )
        if is_placeholder(store.password or ""):
            problems.append(f"MONGODB_URL's password is the placeholder of deploy/k8s/secret.yaml ({PLACEHOLDER})")
        if self.kafka_sasl_password is not None and is_placeholder(self.kafka_sasl_password.get_secret_value()):
            problems.append(f"KAFKA_SASL_PASSWORD is the placeholder of deploy/k8s/secret.yaml ({PLACEHOLDER})")
        if not self.otel_sdk_disabled and not self.otlp_uses_tls and not self.otlp_allow_plaintext:
            problems.append(
                "OTEL_EXPORTER_OTLP_ENDPOINT is plaintext: use https:// (or OTEL_EXPORTER_OTLP_INSECURE=false), "
                "or allow it with OTLP_ALLOW_PLAINTEXT=true"
            )
        return problems
