"""Production refuses the provider simulator, non-HTTPS provider or notify addresses, and key files that are
missing or readable by others; the local configuration (the simulator's) is accepted outside production."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from services.payment.app import Settings, key_file_problems
from tests.unit.test_production_settings import PRODUCTION


@pytest.fixture(autouse=True)
def no_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)


@pytest.fixture
def live(tmp_path: Path) -> dict[str, Any]:
    """A merchant's live configuration: HTTPS everywhere, private key files only the owner can read."""
    files = {}
    for name in ("alipay_app_private_key_file", "alipay_public_key_file"):
        path = tmp_path / f"{name}.pem"
        path.write_text("-----BEGIN KEY-----\n")
        path.chmod(0o600)
        files[name] = str(path)
    return {
        **PRODUCTION,
        "alipay_app_id": "2021004100000000",
        "alipay_gateway_url": "https://openapi.alipay.com/gateway.do",
        "payment_notify_base_url": "https://pay.shop.example",
        **files,
    }


def test_a_live_configuration_is_accepted(live: dict[str, Any]) -> None:
    assert Settings(**live).notify_base_url == "https://pay.shop.example"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        pytest.param({"provider_sim_url": "http://127.0.0.1:8070"}, "simulator is refused", id="simulator"),
        pytest.param(
            {"alipay_gateway_url": "http://127.0.0.1:8070/gateway.do"}, "ALIPAY_GATEWAY_URL must", id="gateway-local"
        ),
        pytest.param({"payment_notify_base_url": "http://pay.shop.example"}, "PAYMENT_NOTIFY_BASE_URL", id="notify"),
        pytest.param({"alipay_app_id": ""}, "no payment provider", id="no-provider"),
    ],
)
def test_production_refuses(live: dict[str, Any], change: dict[str, Any], reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        Settings(**{**live, **change})


def test_a_private_key_others_can_read_or_a_missing_one_is_named(live: dict[str, Any]) -> None:
    assert key_file_problems(Settings(**live)) == []
    Path(live["alipay_app_private_key_file"]).chmod(0o644)
    settings = Settings(**{**live, "wechatpay_apiv3_key_file": "/nonexistent/apiv3_key"})

    problems = key_file_problems(settings)

    assert len(problems) == 2
    assert "ALIPAY_APP_PRIVATE_KEY_FILE is readable by others" in problems[0]
    assert "WECHATPAY_APIV3_KEY_FILE names no file" in problems[1]


def test_payment_providers_maps_methods_to_providers() -> None:
    settings = Settings(payment_providers="alipay=alipay, wechat_pay=wechatpay,card=")

    assert settings.methods == {"alipay": "alipay", "wechat_pay": "wechatpay", "card": ""}


def test_the_simulator_is_accepted_outside_production(live: dict[str, Any]) -> None:
    local = {**live, "environment": "development", "provider_sim_url": "http://127.0.0.1:8070"}
    local["alipay_gateway_url"] = "http://127.0.0.1:8070/gateway.do"

    assert Settings(**local).provider_sim_url
