"""Where the operator tools connect: one settings class for the CLI, the benchmark, chaos and verify.

The variables are the services' own (``KAFKA_BOOTSTRAP_SERVERS``, ``KAFKA_SECURITY_PROTOCOL``, ``KAFKA_SASL_*``,
``KAFKA_SSL_CAFILE``, ``MONGODB_URL``...), so the environment that runs a service on a secured cluster also runs the
tools against it; the URLs of the services' APIs, Jaeger and the SMTP sink are added here.
"""

from __future__ import annotations

from pydantic import SecretStr

from shared.settings import ServiceSettings


class ToolSettings(ServiceSettings):
    """The services' connection settings (Kafka security included) plus the HTTP endpoints the tools read."""

    service_name: str = "fulfil-cli"
    order_url: str = "http://127.0.0.1:8080"
    inventory_url: str = "http://127.0.0.1:8082"
    payment_url: str = "http://127.0.0.1:8081"
    provider_sim_url: str = "http://127.0.0.1:8070"  # the local payment-provider simulator (drills only)
    jaeger_query_url: str = "http://127.0.0.1:16686"
    smtp_api_url: str = "http://127.0.0.1:8025"
    fulfil_api_key: SecretStr | None = None  # the operator's key for the services' APIs

    def with_bootstrap(self, bootstrap: str | None) -> ToolSettings:
        """These settings, the Kafka address replaced by a ``--bootstrap`` option when one is given."""
        return self.model_copy(update={"kafka_bootstrap_servers": bootstrap}) if bootstrap else self


def tool_settings(bootstrap: str | None = None) -> ToolSettings:
    """The tools' settings from the environment, ``bootstrap`` (a ``--bootstrap`` option) overriding the address."""
    return ToolSettings().with_bootstrap(bootstrap)


def kafka_settings(target: ServiceSettings | str | None) -> ServiceSettings:
    """Settings for a Kafka client: settings as given; an address (or None) with the environment's security."""
    return target if isinstance(target, ServiceSettings) else tool_settings(target)


def api_headers() -> dict[str, str]:
    """The API key for the services' HTTP APIs, from FULFIL_API_KEY (none on the local stack)."""
    key = tool_settings().fulfil_api_key
    return {"X-API-Key": key.get_secret_value()} if key else {}
