"""The shop's KPIs, folded from the Kafka topics (never from the services' databases): see ``book``."""
