"""The simulator's keys, made once and kept in its state directory, and the env file the payment and shipping
services read.

Files (private keys and secrets mode 0600):

- ``alipay_app_private_key.pem`` / ``alipay_app_public_key.pem``: the merchant's application key pair; the
  simulator verifies requests with the public half, the service signs with the private half (PKCS#1, which
  pycryptodome's ``RSA.importKey`` reads).
- ``alipay_public_key.pem`` / ``alipay_platform_private_key.pem``: "Alipay's" key pair; replies, notifications
  and return parameters are signed with the private half.
- ``wechatpay_apiclient_key.pem`` / ``wechatpay_apiclient_cert.pem``: the merchant's API key (PKCS#8, as
  ``wechatpayv3`` loads it) and a self-signed certificate whose serial number is the ``serial_no`` of requests.
- ``wechatpay_pub_key.pem`` / ``wechatpay_platform_private_key.pem``: WeChat Pay's platform key pair for
  public-key mode, named by ``public_key_id``.
- ``wechatpay_apiv3_key``: the APIv3 key (32 ASCII characters, no newline) that encrypts callback resources.
- ``ids.json``: the certificate serial number and the public key id.
- ``sf_checkword``: SF Express's 校验码 (checkWord) of the account, which digests requests and pushes.
- ``jd_app_secret``, ``jd_refresh_token``: JD Logistics' application secret (signs requests and pushes) and the
  OAuth refresh token that gets a new access token; ``jd_access_token``: the access token providers.env gives
  (in the env file itself, as JD hands it to the merchant).
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import string
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

ALIPAY_APP_ID = "2021000000000001"
ALIPAY_SELLER_ID = "2088000000000001"
WECHATPAY_MCHID = "1900000001"
WECHATPAY_APPID = "wx0000000000000001"

ALIPAY_APP_PRIVATE = "alipay_app_private_key.pem"
ALIPAY_APP_PUBLIC = "alipay_app_public_key.pem"
ALIPAY_PLATFORM_PRIVATE = "alipay_platform_private_key.pem"
ALIPAY_PLATFORM_PUBLIC = "alipay_public_key.pem"
WECHATPAY_MERCHANT_PRIVATE = "wechatpay_apiclient_key.pem"
WECHATPAY_MERCHANT_CERT = "wechatpay_apiclient_cert.pem"
WECHATPAY_MERCHANT_PUBLIC = "wechatpay_apiclient_public_key.pem"
WECHATPAY_PLATFORM_PRIVATE = "wechatpay_platform_private_key.pem"
WECHATPAY_PLATFORM_PUBLIC = "wechatpay_pub_key.pem"
WECHATPAY_APIV3_KEY = "wechatpay_apiv3_key"
IDS = "ids.json"
ENV_FILE = "providers.env"

SF_PARTNER_ID = "FULFIL_SIM_01"  # 顾客编码
SF_MONTHLY_CARD = "7551234567"  # 月结卡号
JD_APP_KEY = "3f7c1e9a5b2d4c6e8a0b1c2d3e4f5a6b"
JD_CUSTOMER_CODE = "010K0000001"  # 商家编码
SF_CHECKWORD = "sf_checkword"
JD_APP_SECRET = "jd_app_secret"  # noqa: S105 -- file names, not secrets
JD_REFRESH_TOKEN = "jd_refresh_token"  # noqa: S105
JD_ACCESS_TOKEN = "jd_access_token"  # noqa: S105


@dataclass(frozen=True)
class ProviderKeys:
    state: Path
    alipay_app_public: rsa.RSAPublicKey
    alipay_platform_private: rsa.RSAPrivateKey
    wechatpay_merchant_public: rsa.RSAPublicKey
    wechatpay_platform_private: rsa.RSAPrivateKey
    wechatpay_cert_serial_no: str
    wechatpay_public_key_id: str
    wechatpay_apiv3_key: str
    sf_checkword: str
    jd_app_secret: str
    jd_refresh_token: str
    jd_access_token: str

    def path(self, name: str) -> Path:
        return (self.state / name).resolve()


def write_private(path: Path, data: bytes) -> None:
    """Write a file only its owner can read, mode 0600 from its creation on, replaced atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _write_public(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _key_pair(
    state: Path, private_name: str, public_name: str, private_format: serialization.PrivateFormat
) -> rsa.RSAPrivateKey:
    """The pair kept under these names, or a new one (2048-bit RSA) written there."""
    private_path, public_path = state / private_name, state / public_name
    if private_path.exists() and public_path.exists():
        key = serialization.load_pem_private_key(private_path.read_bytes(), password=None)
        if isinstance(key, rsa.RSAPrivateKey):
            return key
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, private_format, serialization.NoEncryption())
    write_private(private_path, pem)
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write_public(public_path, public_pem)
    return key


def _merchant_certificate(state: Path, key: rsa.RSAPrivateKey, serial_no: str) -> None:
    """A self-signed stand-in for the merchant's API certificate, so that the serial number is a real one."""
    path = state / WECHATPAY_MERCHANT_CERT
    if path.exists():
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        if cert.serial_number == int(serial_no, 16) and cert.public_key() == key.public_key():
            return
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "provider-sim merchant"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, WECHATPAY_MCHID),
        ]
    )
    start = datetime.now(UTC) - timedelta(days=1)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(int(serial_no, 16))
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=5 * 365))
        .sign(key, hashes.SHA256())
    )
    _write_public(path, cert.public_bytes(serialization.Encoding.PEM))


def _new_serial_no() -> str:
    # 40 hex digits; the top bit clear keeps it a positive 20-octet X.509 serial number.
    return f"{secrets.randbits(159) | (1 << 155):040X}"


def _new_public_key_id() -> str:
    return f"PUB_KEY_ID_0114{WECHATPAY_MCHID}{datetime.now(UTC):%Y%m%d%H}{secrets.randbelow(10**8):08d}"


def _kept_secret(state: Path, name: str, make: Callable[[], str], *, fixed: str | None = None) -> str:
    """The secret kept under ``name`` (mode 0600), or a new one written there; ``fixed`` replaces it."""
    path = state / name
    kept = path.read_text().strip() if path.exists() else ""
    value = fixed or kept or make()
    if value != kept:
        write_private(path, value.encode())
    return value


def _alphanumeric(n: int) -> Callable[[], str]:
    alphabet = string.ascii_letters + string.digits
    return lambda: "".join(secrets.choice(alphabet) for _ in range(n))


def _hex32() -> str:
    return secrets.token_hex(16)


def load_or_create(
    state: Path,
    *,
    serial_no: str | None = None,
    public_key_id: str | None = None,
    jd_access_token: str | None = None,
) -> ProviderKeys:
    """The keys in ``state``, making what is missing; ``serial_no``/``public_key_id`` fix those identifiers
    (docker-compose gives them to both the simulator and the payment service), ``jd_access_token`` JD's initial
    access token likewise."""
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    pkcs1, pkcs8 = serialization.PrivateFormat.TraditionalOpenSSL, serialization.PrivateFormat.PKCS8
    alipay_app = _key_pair(state, ALIPAY_APP_PRIVATE, ALIPAY_APP_PUBLIC, pkcs1)
    alipay_platform = _key_pair(state, ALIPAY_PLATFORM_PRIVATE, ALIPAY_PLATFORM_PUBLIC, pkcs1)
    merchant = _key_pair(state, WECHATPAY_MERCHANT_PRIVATE, WECHATPAY_MERCHANT_PUBLIC, pkcs8)
    platform = _key_pair(state, WECHATPAY_PLATFORM_PRIVATE, WECHATPAY_PLATFORM_PUBLIC, pkcs8)

    ids_path = state / IDS
    ids: dict[str, str] = json.loads(ids_path.read_text()) if ids_path.exists() else {}
    wanted = {
        "wechatpay_cert_serial_no": serial_no or ids.get("wechatpay_cert_serial_no") or _new_serial_no(),
        "wechatpay_public_key_id": public_key_id or ids.get("wechatpay_public_key_id") or _new_public_key_id(),
    }
    if wanted != ids:
        _write_public(ids_path, json.dumps(wanted, indent=2).encode())
    _merchant_certificate(state, merchant, wanted["wechatpay_cert_serial_no"])

    apiv3_path = state / WECHATPAY_APIV3_KEY
    if not apiv3_path.exists() or len(apiv3_path.read_text()) != 32:
        alphabet = string.ascii_letters + string.digits
        write_private(apiv3_path, "".join(secrets.choice(alphabet) for _ in range(32)).encode())
    return ProviderKeys(
        state=state,
        alipay_app_public=alipay_app.public_key(),
        alipay_platform_private=alipay_platform,
        wechatpay_merchant_public=merchant.public_key(),
        wechatpay_platform_private=platform,
        wechatpay_cert_serial_no=wanted["wechatpay_cert_serial_no"],
        wechatpay_public_key_id=wanted["wechatpay_public_key_id"],
        wechatpay_apiv3_key=apiv3_path.read_text(),
        sf_checkword=_kept_secret(state, SF_CHECKWORD, _alphanumeric(32)),
        jd_app_secret=_kept_secret(state, JD_APP_SECRET, _hex32),
        jd_refresh_token=_kept_secret(state, JD_REFRESH_TOKEN, _hex32),
        jd_access_token=_kept_secret(state, JD_ACCESS_TOKEN, _hex32, fixed=jd_access_token),
    )


def provider_env(keys: ProviderKeys, public_url: str) -> dict[str, str]:
    """What the payment service needs to reach the simulated providers with the real client libraries, and the
    shipping service the carriers (``SF_API_URL``: its client appends ``/std/service``; ``JD_API_URL``: the LOP
    paths)."""
    return {
        "ALIPAY_APP_ID": ALIPAY_APP_ID,
        "ALIPAY_GATEWAY_URL": f"{public_url}/gateway.do",
        "ALIPAY_APP_PRIVATE_KEY_FILE": str(keys.path(ALIPAY_APP_PRIVATE)),
        "ALIPAY_PUBLIC_KEY_FILE": str(keys.path(ALIPAY_PLATFORM_PUBLIC)),
        "ALIPAY_SELLER_ID": ALIPAY_SELLER_ID,
        "WECHATPAY_MCHID": WECHATPAY_MCHID,
        "WECHATPAY_APPID": WECHATPAY_APPID,
        "WECHATPAY_API_URL": public_url,
        "WECHATPAY_PRIVATE_KEY_FILE": str(keys.path(WECHATPAY_MERCHANT_PRIVATE)),
        "WECHATPAY_CERT_SERIAL_NO": keys.wechatpay_cert_serial_no,
        "WECHATPAY_APIV3_KEY_FILE": str(keys.path(WECHATPAY_APIV3_KEY)),
        "WECHATPAY_PUBLIC_KEY_FILE": str(keys.path(WECHATPAY_PLATFORM_PUBLIC)),
        "WECHATPAY_PUBLIC_KEY_ID": keys.wechatpay_public_key_id,
        "SF_API_URL": public_url,
        "SF_PARTNER_ID": SF_PARTNER_ID,
        "SF_CHECKWORD_FILE": str(keys.path(SF_CHECKWORD)),
        "SF_MONTHLY_CARD": SF_MONTHLY_CARD,
        "JD_API_URL": public_url,
        "JD_APP_KEY": JD_APP_KEY,
        "JD_APP_SECRET_FILE": str(keys.path(JD_APP_SECRET)),
        "JD_ACCESS_TOKEN": keys.jd_access_token,
        "JD_REFRESH_TOKEN_FILE": str(keys.path(JD_REFRESH_TOKEN)),
        "JD_CUSTOMER_CODE": JD_CUSTOMER_CODE,
        "PROVIDER_SIM_URL": public_url,
    }


def write_env(keys: ProviderKeys, public_url: str) -> Path:
    path = keys.state / ENV_FILE
    lines = ["# Written by deploy/local/provider_sim on each start: the simulated payment providers and carriers."]
    lines += [f"{k}={v}" for k, v in provider_env(keys, public_url).items()]
    write_private(path, ("\n".join(lines) + "\n").encode())
    return path


def sign(key: rsa.RSAPrivateKey, message: bytes) -> str:
    """SHA256withRSA (PKCS#1 v1.5), base64: Alipay's RSA2 and WeChat Pay's WECHATPAY2-SHA256-RSA2048."""
    return base64.b64encode(key.sign(message, padding.PKCS1v15(), hashes.SHA256())).decode()


def verify(key: rsa.RSAPublicKey, message: bytes, signature: str) -> bool:
    try:
        key.verify(base64.b64decode(signature, validate=False), message, padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, ValueError):
        return False
    return True
