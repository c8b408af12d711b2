"""The payment provider simulator (deploy/local/provider_sim) against the real client libraries.

python-alipay-sdk and wechatpayv3 are configured from the providers.env the simulator writes, changing only the
gateway URL, as the payment service does; a simulator of its own runs for this module (a subprocess on a free port,
its own state directory, a time scale of 0.001) and a local HTTP server receives its notifications.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import gzip
import hashlib
import io
import json
import re
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
from alipay import AliPay
from alipay.exceptions import AliPayException, AliPayValidationError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from wechatpayv3.async_ import AsyncWeChatPay, WeChatPayType
from wechatpayv3.utils import build_authorization, load_private_key, load_public_key, rsa_verify

from deploy.local.provider_sim import keys as sim_keys

pytestmark = pytest.mark.infra

REPO = Path(__file__).resolve().parents[2]
BEIJING = dt.timezone(dt.timedelta(hours=8))
WECHAT_BILL_HEADER = (
    "交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,货币种类,"
    "应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,充值券退款金额,退款类型,退款状态,商品名称,商户数据包,手续费,"
    "费率,订单金额,申请退款金额,费率备注"
)
ALIPAY_BILL_HEADER = (
    "支付宝交易号,商户订单号,业务类型,商品名称,创建时间,完成时间,门店编号,门店名称,操作员,终端号,对方账户,订单金额（元）,"
    "商家实收（元）,支付宝红包（元）,集分宝（元）,支付宝优惠（元）,商家优惠（元）,券核销金额（元）,券名称,"
    "商家红包消费金额（元）,卡消费金额（元）,退款批次号/请求号,服务费（元）,分润（元）,备注"
)


def new_no(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:16]}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class Sim:
    url: str
    state: Path
    env: dict[str, str]

    def control(self, path: str, **body: Any) -> httpx.Response:
        return httpx.post(f"{self.url}/control/{path}", json=body, timeout=10)

    def trade(self, provider: str, out_trade_no: str) -> dict[str, Any]:
        r = httpx.get(f"{self.url}/control/trades/{provider}/{out_trade_no}", timeout=10)
        r.raise_for_status()
        view: dict[str, Any] = r.json()
        return view

    def read(self, variable: str) -> str:
        return Path(self.env[variable]).read_text()


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    state = tmp_path_factory.mktemp("provider-sim")
    log_path = state.parent / "provider-sim.log"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "deploy.local.provider_sim", "--state", str(state), "--port", str(port)]
    with log_path.open("wb") as log:
        proc = subprocess.Popen([*cmd, "--time-scale", "0.001"], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"provider-sim did not come up:\n{log_path.read_text()[-3000:]}", pytrace=False)
            time.sleep(0.1)
        lines = (state / "providers.env").read_text().splitlines()
        env = dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))
        yield Sim(url=url, state=state, env=env)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Received:
    headers: dict[str, str]  # names lower-cased
    body: bytes


@dataclass
class Receiver:
    """The merchant's notify endpoint: records each delivery and answers from a per-path script."""

    base: str = ""
    received: dict[str, list[Received]] = field(default_factory=dict)
    scripts: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str, *replies: tuple[int, str]) -> str:
        """The URL of a new endpoint; it answers ``replies`` in turn, then 200 ``success``."""
        self.scripts[path] = list(replies)
        return f"{self.base}{path}"

    def wait_for(self, path: str, count: int, timeout: float = 10.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                got = list(self.received.get(path, []))
            if len(got) >= count or time.monotonic() > deadline:
                assert len(got) >= count, f"{path}: {len(got)} deliveries, wanted {count}"
                return got
            time.sleep(0.02)


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    rec = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with rec.lock:
                rec.received.setdefault(self.path, []).append(
                    Received({k.lower(): v for k, v in self.headers.items()}, body)
                )
                script = rec.scripts.setdefault(self.path, [])
                status, text = script.pop(0) if script else (200, "success")
            self.send_response(status)
            self.send_header("Content-Length", str(len(text.encode())))
            self.end_headers()
            self.wfile.write(text.encode())

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    rec.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield rec
    server.shutdown()
    server.server_close()


def alipay_client(sim: Sim, *, notify_url: str | None = None, private_key: str | None = None, app_id: str = "") -> Any:
    client = AliPay(
        appid=app_id or sim.env["ALIPAY_APP_ID"],
        app_notify_url=notify_url,
        app_private_key_string=private_key or sim.read("ALIPAY_APP_PRIVATE_KEY_FILE"),
        alipay_public_key_string=sim.read("ALIPAY_PUBLIC_KEY_FILE"),
        sign_type="RSA2",
    )
    client._gateway = sim.env["ALIPAY_GATEWAY_URL"]
    return client


@asynccontextmanager
async def wechat_client(sim: Sim, notify_url: str = "https://shop.example/notify") -> AsyncIterator[Any]:
    client = AsyncWeChatPay(
        wechatpay_type=WeChatPayType.NATIVE,
        mchid=sim.env["WECHATPAY_MCHID"],
        private_key=sim.read("WECHATPAY_PRIVATE_KEY_FILE"),
        cert_serial_no=sim.env["WECHATPAY_CERT_SERIAL_NO"],
        appid=sim.env["WECHATPAY_APPID"],
        apiv3_key=sim.read("WECHATPAY_APIV3_KEY_FILE"),
        notify_url=notify_url,
        public_key=sim.read("WECHATPAY_PUBLIC_KEY_FILE"),
        public_key_id=sim.env["WECHATPAY_PUBLIC_KEY_ID"],
    )
    async with client:
        client._core._gate_way = sim.env["WECHATPAY_API_URL"]
        yield client


def other_rsa_key() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return pem.decode()


def verified_form(client: Any, body: bytes) -> tuple[dict[str, str], bool]:
    fields = dict(parse_qsl(body.decode(), keep_blank_values=True))
    sign = fields.pop("sign")
    return fields, bool(client.verify(dict(fields), sign))


def scanned_precreate(sim: Sim, client: Any, out_trade_no: str, amount: str = "12.30") -> dict[str, Any]:
    reply: dict[str, Any] = client.api_alipay_trade_precreate(
        subject="马克杯 mug", out_trade_no=out_trade_no, total_amount=amount
    )
    assert reply["code"] == "10000", reply
    assert httpx.get(reply["qr_code"], timeout=10).status_code == 200  # the customer scans
    return reply


# ------------------------------------------------------------------ Alipay


def test_alipay_precreated_trade_exists_once_scanned_and_refunds_once_per_request_no(sim: Sim) -> None:
    client, no = alipay_client(sim), new_no("A")
    reply = client.api_alipay_trade_precreate(subject="马克杯 {mug}", out_trade_no=no, total_amount="12.30")
    assert reply["code"] == "10000"
    assert reply["qr_code"].startswith(f"{sim.url}/qr/alipay/")
    assert client.api_alipay_trade_query(out_trade_no=no)["sub_code"] == "ACQ.TRADE_NOT_EXIST"  # not scanned yet

    page = httpx.get(reply["qr_code"], timeout=10)
    assert page.status_code == 200
    assert "12.30" in page.text
    assert "马克杯 {mug}" in page.text
    assert client.api_alipay_trade_query(out_trade_no=no)["trade_status"] == "WAIT_BUYER_PAY"

    paid = sim.control("pay", provider="alipay", out_trade_no=no)
    assert paid.status_code == 200
    assert paid.json()["outcome"] == "paid"
    query = client.api_alipay_trade_query(out_trade_no=no)
    assert (query["trade_status"], query["total_amount"], query["buyer_pay_amount"]) == (
        "TRADE_SUCCESS",
        "12.30",
        "12.30",
    )
    assert query["send_pay_date"]
    assert query["trade_no"]

    first = client.api_alipay_trade_refund(refund_amount="4.00", out_trade_no=no, out_request_no="R1")
    again = client.api_alipay_trade_refund(refund_amount="4.00", out_trade_no=no, out_request_no="R1")
    assert (first["code"], first["fund_change"], first["refund_fee"]) == ("10000", "Y", "4.00")
    assert (again["code"], again["fund_change"], again["refund_fee"]) == ("10000", "N", "4.00")
    too_much = client.api_alipay_trade_refund(refund_amount="8.31", out_trade_no=no, out_request_no="R2")
    assert too_much["sub_code"] == "ACQ.REFUND_AMT_NOT_EQUAL_TOTAL"

    refund = client.api_alipay_trade_fastpay_refund_query("R1", out_trade_no=no)
    assert (refund["refund_status"], refund["refund_amount"], refund["out_request_no"]) == (
        "REFUND_SUCCESS",
        "4.00",
        "R1",
    )
    unknown = client.api_alipay_trade_fastpay_refund_query("R9", out_trade_no=no)
    assert unknown["code"] == "10000"
    assert "refund_status" not in unknown
    assert [r["amount"] for r in sim.trade("alipay", no)["refunds"]] == ["4.00"]


def test_alipay_precreate_again_answers_the_same_qr_code_and_another_amount_is_inconsistent(sim: Sim) -> None:
    client, no = alipay_client(sim), new_no("A")
    first = client.api_alipay_trade_precreate(subject="mug", out_trade_no=no, total_amount="5.00")
    second = client.api_alipay_trade_precreate(subject="mug", out_trade_no=no, total_amount="5.00")
    other = client.api_alipay_trade_precreate(subject="mug", out_trade_no=no, total_amount="6.00")

    assert first["qr_code"] == second["qr_code"]
    assert (other["code"], other["sub_code"]) == ("40004", "ACQ.CONTEXT_INCONSISTENT")
    sim.control("pay", provider="alipay", out_trade_no=no)
    assert client.api_alipay_trade_precreate(subject="mug", out_trade_no=no, total_amount="5.00")["sub_code"] == (
        "ACQ.TRADE_HAS_SUCCESS"
    )


def test_alipay_close_stops_an_unpaid_trade_and_refuses_a_paid_one(sim: Sim) -> None:
    client = alipay_client(sim)
    unpaid, paid = new_no("A"), new_no("A")
    scanned_precreate(sim, client, unpaid)
    scanned_precreate(sim, client, paid)
    sim.control("pay", provider="alipay", out_trade_no=paid)

    assert client.api_alipay_trade_refund(refund_amount="1.00", out_trade_no=unpaid)["sub_code"] == (
        "ACQ.TRADE_STATUS_ERROR"
    )
    assert client.api_alipay_trade_close(out_trade_no=unpaid)["code"] == "10000"
    assert client.api_alipay_trade_query(out_trade_no=unpaid)["trade_status"] == "TRADE_CLOSED"
    assert sim.control("pay", provider="alipay", out_trade_no=unpaid).status_code == 409
    assert client.api_alipay_trade_close(out_trade_no=paid)["sub_code"] == "ACQ.TRADE_STATUS_ERROR"
    assert client.api_alipay_trade_close(out_trade_no=new_no("A"))["sub_code"] == "ACQ.TRADE_NOT_EXIST"


def test_alipay_refuses_a_request_signed_with_another_key_and_an_unknown_app(sim: Sim) -> None:
    forged = alipay_client(sim, private_key=other_rsa_key())
    reply = forged.api_alipay_trade_query(out_trade_no=new_no("A"))  # a signed error reply: the library returns it
    assert (reply["code"], reply["sub_code"]) == ("40002", "isv.invalid-signature")

    client = alipay_client(sim)
    stale = client.build_body("alipay.trade.query", {"out_trade_no": new_no("A")}, timestamp="2001-01-01 00:00:00")
    assert client.verified_sync_response(stale, "alipay_trade_query_response")["sub_code"] == "isv.invalid-timestamp"
    unsigned = httpx.get(sim.env["ALIPAY_GATEWAY_URL"], params={"app_id": sim.env["ALIPAY_APP_ID"]}, timeout=10)
    assert unsigned.json()["error_response"]["code"] == "40001"

    stranger = alipay_client(sim, app_id="2021999999999999")
    with pytest.raises(AliPayException) as refused:  # unsigned, as Alipay answers an app it does not know
        stranger.api_alipay_trade_query(out_trade_no=new_no("A"))
    assert "isv.invalid-app-id" in str(refused.value)


def test_alipay_reply_changed_in_transit_fails_the_librarys_verification(sim: Sim) -> None:
    client, no = alipay_client(sim), new_no("A")
    scanned_precreate(sim, client, no)
    url = f"{client._gateway}?{client.sign_data(client.build_body('alipay.trade.query', {'out_trade_no': no}))}"
    with urllib.request.urlopen(url, timeout=10) as r:
        raw = r.read().decode()

    reply = "alipay_trade_query_response"
    assert client._verify_and_return_sync_response(raw, reply)["trade_status"] == "WAIT_BUYER_PAY"
    signed = client.sign_data(client.build_body("alipay.trade.query", {"out_trade_no": no}))
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    posted = httpx.post(client._gateway, content=signed, headers=form, timeout=10)  # a form POST works as a GET
    assert client._verify_and_return_sync_response(posted.text, reply)["out_trade_no"] == no
    tampered = raw.replace('"WAIT_BUYER_PAY"', '"TRADE_SUCCESS"')
    assert tampered != raw
    with pytest.raises(AliPayValidationError):
        client._verify_and_return_sync_response(tampered, "alipay_trade_query_response")


def test_alipay_page_pay_url_opens_the_cashier_and_pay_returns_signed_to_the_return_url(sim: Sim) -> None:
    client, no = alipay_client(sim), new_no("A")
    signed = client.api_alipay_trade_page_pay("Red mug", no, "79.80", return_url="https://shop.example/paid")
    assert client.api_alipay_trade_query(out_trade_no=no)["sub_code"] == "ACQ.TRADE_NOT_EXIST"  # not opened yet

    page = httpx.get(f"{client._gateway}?{signed}", timeout=10)
    assert page.status_code == 200
    assert "79.80" in page.text
    assert "Red mug" in page.text
    action = re.search(r'action="(/cashier/alipay/[^"]+/pay)"', page.text)
    assert action is not None
    assert re.search(r'action="/cashier/alipay/[^"]+/abandon"', page.text)
    back = httpx.post(f"{sim.url}{action.group(1)}", timeout=10)

    assert back.status_code == 303
    location = urlsplit(back.headers["location"])
    assert (location.scheme, location.netloc, location.path) == ("https", "shop.example", "/paid")
    fields = dict(parse_qsl(location.query))
    sign = fields.pop("sign")
    assert client.verify(dict(fields), sign)
    assert (fields["method"], fields["out_trade_no"], fields["total_amount"]) == (
        "alipay.trade.page.pay.return",
        no,
        "79.80",
    )
    assert client.api_alipay_trade_query(out_trade_no=no)["trade_status"] == "TRADE_SUCCESS"
    other_amount = httpx.get(f"{client._gateway}?{client.api_alipay_trade_page_pay('Red mug', no, '1.00')}", timeout=10)
    assert "ACQ.CONTEXT_INCONSISTENT" in other_amount.text


def test_alipay_notification_verifies_and_is_retried_until_answered_success(sim: Sim, receiver: Receiver) -> None:
    path = f"/alipay/{new_no('n')}"
    client, no = alipay_client(sim, notify_url=receiver.url(path, (200, "fail"), (500, "oops"))), new_no("A")
    scanned_precreate(sim, client, no, "33.30")

    sim.control("pay", provider="alipay", out_trade_no=no)
    deliveries = receiver.wait_for(path, 3)

    for delivery in deliveries:
        fields, valid = verified_form(client, delivery.body)
        assert valid
        assert (fields["trade_status"], fields["out_trade_no"], fields["total_amount"]) == (
            "TRADE_SUCCESS",
            no,
            "33.30",
        )
        assert fields["notify_type"] == "trade_status_sync"
    fields, _ = verified_form(client, deliveries[0].body)
    sign = dict(parse_qsl(deliveries[0].body.decode()))["sign"]
    assert not client.verify({**fields, "total_amount": "0.01"}, sign)
    time.sleep(0.3)
    assert len(receiver.received[path]) == 3  # answered success: no more
    attempts = sim.trade("alipay", no)["notifications"][0]["attempts"]
    assert [(a["status"], a["delivered"]) for a in attempts] == [(200, False), (500, False), (200, True)]


def test_alipay_expired_trade_closes_is_announced_and_cannot_be_paid(sim: Sim, receiver: Receiver) -> None:
    path = f"/alipay/{new_no('n')}"
    client, no = alipay_client(sim, notify_url=receiver.url(path)), new_no("A")
    scanned_precreate(sim, client, no)

    assert sim.control("expire", provider="alipay", out_trade_no=no).status_code == 200
    fields, valid = verified_form(client, receiver.wait_for(path, 1)[0].body)

    assert valid
    assert fields["trade_status"] == "TRADE_CLOSED"
    assert client.api_alipay_trade_query(out_trade_no=no)["trade_status"] == "TRADE_CLOSED"
    assert sim.control("pay", provider="alipay", out_trade_no=no).status_code == 409

    timed = new_no("A")
    # Whole seconds (the protocol's format): 3 s ahead leaves the cashier page at least 2 s to be read while payable.
    time_expire = (dt.datetime.now(BEIJING) + dt.timedelta(seconds=3)).strftime("%Y-%m-%d %H:%M:%S")
    client.api_alipay_trade_precreate(subject="mug", out_trade_no=timed, total_amount="1.00", time_expire=time_expire)
    cashier_url = f"{sim.url}{sim.trade('alipay', timed)['cashier_url']}"
    assert 'id="pay"' in httpx.get(cashier_url, timeout=10).text  # payable until it expires
    deadline = time.monotonic() + 8
    while client.api_alipay_trade_query(out_trade_no=timed)["trade_status"] != "TRADE_CLOSED":
        assert time.monotonic() < deadline, "never closed"
        time.sleep(0.1)
    assert "trade closed" in httpx.get(cashier_url, timeout=10).text


def test_alipay_declined_payment_moves_no_money_and_the_trade_still_waits(sim: Sim) -> None:
    client, no = alipay_client(sim), new_no("A")
    scanned_precreate(sim, client, no)
    sim.control("faults", provider="alipay", operation="pay", kind="decline", out_trade_no=no)

    declined = sim.control("pay", provider="alipay", out_trade_no=no)

    assert declined.json()["outcome"] == "declined"
    assert client.api_alipay_trade_query(out_trade_no=no)["trade_status"] == "WAIT_BUYER_PAY"
    assert sim.control("pay", provider="alipay", out_trade_no=no).json()["outcome"] == "paid"


def test_alipay_lost_refund_reply_took_effect_and_the_retry_refunds_nothing_more(sim: Sim) -> None:
    client, no = alipay_client(sim), new_no("A")
    scanned_precreate(sim, client, no, "20.00")
    sim.control("pay", provider="alipay", out_trade_no=no)

    sim.control("faults", provider="alipay", operation="refund", kind="5xx", out_trade_no=no)
    with pytest.raises(urllib.error.HTTPError) as unavailable:
        client.api_alipay_trade_refund(refund_amount="20.00", out_trade_no=no, out_request_no="R1")
    assert unavailable.value.code == 503
    assert sim.trade("alipay", no)["refunds"] == []  # refused before any effect

    sim.control("faults", provider="alipay", operation="alipay.trade.refund", kind="lost_reply", out_trade_no=no)
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        client.api_alipay_trade_refund(refund_amount="20.00", out_trade_no=no, out_request_no="R1")
    assert sim.trade("alipay", no)["status"] == "TRADE_CLOSED"  # the full refund happened

    retry = client.api_alipay_trade_refund(refund_amount="20.00", out_trade_no=no, out_request_no="R1")
    assert (retry["fund_change"], retry["refund_fee"]) == ("N", "20.00")
    assert len(sim.trade("alipay", no)["refunds"]) == 1


def test_alipay_trade_bill_lists_payments_refunds_and_planted_rows(sim: Sim) -> None:
    client, no, ghost = alipay_client(sim), new_no("A"), new_no("GHOST")
    scanned_precreate(sim, client, no, "50.00")
    sim.control("pay", provider="alipay", out_trade_no=no)
    client.api_alipay_trade_refund(refund_amount="10.00", out_trade_no=no, out_request_no="R1")
    day = sim.trade("alipay", no)["paid_at"][:10]
    planted = sim.control("bill-rows", provider="alipay", date=day, row={"out_trade_no": ghost, "amount": "12.34"})
    assert planted.status_code == 200
    try:
        reply = client.server_api(
            "alipay.data.dataservice.bill.downloadurl.query", biz_content={"bill_type": "trade", "bill_date": day}
        )
    finally:
        httpx.delete(f"{sim.url}/control/bill-rows", timeout=10)
    archive = httpx.get(reply["bill_download_url"], timeout=10).content

    with zipfile.ZipFile(io.BytesIO(archive)) as z:
        (name,) = z.namelist()
        text = z.read(name).decode("gbk")
    lines = text.splitlines()
    assert name.endswith(f"_{day.replace('-', '')}_业务明细.csv")
    assert lines[0] == "#支付宝业务明细查询"
    assert lines[4] == ALIPAY_BILL_HEADER
    assert lines[-1].startswith("#导出时间")
    table = [ln for ln in lines if not ln.startswith("#")]
    rows = [{k: v.strip() for k, v in r.items()} for r in csv.DictReader(table)]
    ours = sorted((r["业务类型"], r["订单金额（元）"], r["退款批次号/请求号"]) for r in rows if r["商户订单号"] == no)
    assert ours == [("交易", "50.00", ""), ("退款", "-10.00", "R1")]
    assert [r["订单金额（元）"] for r in rows if r["商户订单号"] == ghost] == ["12.34"]


def test_alipay_notification_held_until_released_and_duplicated_when_asked(sim: Sim, receiver: Receiver) -> None:
    held_path, twice_path = f"/alipay/{new_no('n')}", f"/alipay/{new_no('n')}"
    held, twice = new_no("A"), new_no("A")
    scanned_precreate(sim, alipay_client(sim, notify_url=receiver.url(held_path)), held)
    scanned_precreate(sim, alipay_client(sim, notify_url=receiver.url(twice_path)), twice)
    sim.control("notifications", provider="alipay", out_trade_no=held, mode="hold")
    sim.control("notifications", provider="alipay", out_trade_no=twice, mode="duplicate")
    late_path, late = f"/alipay/{new_no('n')}", new_no("A")
    scanned_precreate(sim, alipay_client(sim, notify_url=receiver.url(late_path)), late)
    sim.control("notifications", provider="alipay", out_trade_no=late, mode="late", delay_seconds=0.5)

    paid_at = time.monotonic()
    sim.control("pay", provider="alipay", out_trade_no=late)
    sim.control("pay", provider="alipay", out_trade_no=held)
    sim.control("pay", provider="alipay", out_trade_no=twice)
    receiver.wait_for(late_path, 1)
    assert time.monotonic() - paid_at >= 0.5
    assert len(receiver.wait_for(twice_path, 2)) == 2
    assert held_path not in receiver.received or not receiver.received[held_path]
    assert sim.control("notifications/release", provider="alipay", out_trade_no=held).json() == {"released": 1}

    assert len(receiver.wait_for(held_path, 1)) == 1


# ------------------------------------------------------------------ WeChat Pay


async def test_wechat_native_payment_callback_decrypts_and_a_paid_order_cannot_be_closed(
    sim: Sim, receiver: Receiver
) -> None:
    path, no = f"/wechat/{new_no('n')}", new_no("W")
    async with wechat_client(sim, receiver.url(path)) as client:
        code, body = await client.pay(description="马克杯", out_trade_no=no, amount={"total": 1230})
        assert code == 200
        assert json.loads(body)["code_url"].startswith("weixin://wxpay/bizpayurl?pr=")
        code, body = await client.query(out_trade_no=no)
        assert (code, json.loads(body)["trade_state"]) == (200, "NOTPAY")

        assert sim.control("pay", provider="wechatpay", out_trade_no=no).status_code == 200
        delivery = receiver.wait_for(path, 1)[0]
        callback = client.callback(delivery.headers, delivery.body)

        assert callback["event_type"] == "TRANSACTION.SUCCESS"
        resource = callback["resource"]
        assert (resource["out_trade_no"], resource["trade_state"], resource["amount"]["total"]) == (no, "SUCCESS", 1230)
        assert (resource["mchid"], resource["appid"]) == (sim.env["WECHATPAY_MCHID"], sim.env["WECHATPAY_APPID"])
        tampered = delivery.body.replace(b'"summary":"', b'"summary":"x')
        assert tampered != delivery.body
        assert client.callback(delivery.headers, tampered) is None
        code, body = await client.query(out_trade_no=no)
        assert json.loads(body)["transaction_id"] == resource["transaction_id"]
        code, body = await client.close(out_trade_no=no)
        assert (code, json.loads(body)["code"]) == (400, "ORDERPAID")


async def test_wechat_refund_is_processing_then_success_with_its_callback(sim: Sim, receiver: Receiver) -> None:
    path, no = f"/wechat/{new_no('n')}", new_no("W")
    async with wechat_client(sim, receiver.url(path)) as client:
        await client.pay(description="mug", out_trade_no=no, amount={"total": 1000})
        sim.control("pay", provider="wechatpay", out_trade_no=no)
        amount = {"refund": 300, "total": 1000, "currency": "CNY"}

        code, body = await client.refund(out_refund_no=f"{no}-R1", amount=amount, out_trade_no=no)
        assert (code, json.loads(body)["status"]) == (200, "PROCESSING")
        refund_id = json.loads(body)["refund_id"]
        deadline = time.monotonic() + 5
        while json.loads((await client.query_refund(out_refund_no=f"{no}-R1"))[1])["status"] != "SUCCESS":
            assert time.monotonic() < deadline, "the refund never succeeded"
            await asyncio.sleep(0.05)
        callbacks = [client.callback(d.headers, d.body) for d in receiver.wait_for(path, 2)]
        again = await client.refund(out_refund_no=f"{no}-R1", amount=amount, out_trade_no=no)
        too_much = await client.refund(
            out_refund_no=f"{no}-R2", amount={"refund": 701, "total": 1000, "currency": "CNY"}, out_trade_no=no
        )
        code, body = await client.query(out_trade_no=no)

    assert [c["event_type"] for c in callbacks] == ["TRANSACTION.SUCCESS", "REFUND.SUCCESS"]
    refunded = callbacks[1]["resource"]
    assert (refunded["refund_status"], refunded["amount"]["refund"], refunded["refund_id"]) == (
        "SUCCESS",
        300,
        refund_id,
    )
    assert (again[0], json.loads(again[1])["refund_id"]) == (200, refund_id)  # the same refund, not a second one
    assert (too_much[0], json.loads(too_much[1])["code"]) == (400, "PARAM_ERROR")
    assert json.loads(body)["trade_state"] == "REFUND"
    assert sim.trade("wechatpay", no)["refunded"] == 300


async def test_wechat_h5_url_opens_the_cashier_and_jsapi_gets_a_prepay_id(sim: Sim) -> None:
    h5, jsapi = new_no("W"), new_no("W")
    scene = {"payer_client_ip": "203.0.113.7", "h5_info": {"type": "Wap"}}
    async with wechat_client(sim) as client:
        code, body = await client.pay(
            description="mug", out_trade_no=h5, amount={"total": 4321}, scene_info=scene, pay_type=WeChatPayType.H5
        )
        assert code == 200
        h5_url = json.loads(body)["h5_url"]
        code, body = await client.pay(
            description="mug",
            out_trade_no=jsapi,
            amount={"total": 100},
            payer={"openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"},
            pay_type=WeChatPayType.JSAPI,
        )

    assert code == 200
    assert json.loads(body)["prepay_id"].startswith("wx")
    page = httpx.get(h5_url, timeout=10)
    assert page.status_code == 200
    assert "43.21" in page.text
    action = re.search(r'action="(/cashier/wechatpay/[^"]+/pay)"', page.text)
    assert action is not None
    assert "支付成功" in httpx.post(f"{sim.url}{action.group(1)}", timeout=10).text
    assert sim.trade("wechatpay", h5)["status"] == "SUCCESS"


async def test_wechat_out_of_order_sends_the_refund_callback_before_the_payment_one(
    sim: Sim, receiver: Receiver
) -> None:
    path, no = f"/wechat/{new_no('n')}", new_no("W")
    async with wechat_client(sim, receiver.url(path)) as client:
        await client.pay(description="mug", out_trade_no=no, amount={"total": 200})
        sim.control("notifications", provider="wechatpay", out_trade_no=no, mode="out_of_order")
        sim.control("pay", provider="wechatpay", out_trade_no=no)
        await asyncio.sleep(0.2)
        assert not receiver.received.get(path)  # held until the next state's callback
        amount = {"refund": 200, "total": 200, "currency": "CNY"}
        await client.refund(out_refund_no=f"{no}-R1", amount=amount, out_trade_no=no)
        callbacks = [client.callback(d.headers, d.body) for d in receiver.wait_for(path, 2)]

    assert [c["event_type"] for c in callbacks] == ["REFUND.SUCCESS", "TRANSACTION.SUCCESS"]


async def test_wechat_same_order_again_gets_the_same_answer_and_another_amount_is_refused(sim: Sim) -> None:
    no = new_no("W")
    async with wechat_client(sim) as client:
        first = await client.pay(description="mug", out_trade_no=no, amount={"total": 500})
        second = await client.pay(description="mug", out_trade_no=no, amount={"total": 500})
        other = await client.pay(description="mug", out_trade_no=no, amount={"total": 501})

    assert first == second
    assert (other[0], json.loads(other[1])["code"]) == (403, "OUT_TRADE_NO_USED")


async def test_wechat_request_with_a_bad_authorization_gets_a_signed_401_sign_error(sim: Sim) -> None:
    path = f"/v3/pay/transactions/out-trade-no/{new_no('W')}?mchid={sim.env['WECHATPAY_MCHID']}"
    forged = build_authorization(
        path, "GET", sim.env["WECHATPAY_MCHID"], sim.env["WECHATPAY_CERT_SERIAL_NO"], load_private_key(other_rsa_key())
    )
    r = httpx.get(f"{sim.url}{path}", headers={"Authorization": forged, "Accept": "application/json"}, timeout=10)

    assert r.status_code == 401
    assert r.json()["code"] == "SIGN_ERROR"
    assert r.headers["wechatpay-serial"] == sim.env["WECHATPAY_PUBLIC_KEY_ID"]
    assert r.headers["wechatpay-signature-type"] == "WECHATPAY2-SHA256-RSA2048"
    platform = load_public_key(sim.read("WECHATPAY_PUBLIC_KEY_FILE"))
    h = r.headers
    assert rsa_verify(h["wechatpay-timestamp"], h["wechatpay-nonce"], r.text, h["wechatpay-signature"], platform)
    unsigned = httpx.get(f"{sim.url}{path}", timeout=10)
    assert (unsigned.status_code, unsigned.json()["code"]) == (401, "SIGN_ERROR")


async def test_wechat_faults_5xx_before_the_effect_lost_reply_after_it_and_slow_replies_late(sim: Sim) -> None:
    no = new_no("W")
    async with wechat_client(sim) as client:
        sim.control("faults", provider="wechatpay", operation="native", kind="5xx", out_trade_no=no)
        code, body = await client.pay(description="mug", out_trade_no=no, amount={"total": 100})
        assert (code, json.loads(body)["code"]) == (500, "SYSTEM_ERROR")
        code, body = await client.query(out_trade_no=no)
        assert (code, json.loads(body)["code"]) == (404, "ORDER_NOT_EXIST")  # nothing was made

        sim.control("faults", provider="wechatpay", operation="native", kind="lost_reply", out_trade_no=no)
        with pytest.raises(httpx.TransportError):
            await client.pay(description="mug", out_trade_no=no, amount={"total": 100})
        code, body = await client.query(out_trade_no=no)
        assert (code, json.loads(body)["trade_state"]) == (200, "NOTPAY")  # but this one was

        sim.control("faults", provider="wechatpay", operation="query", kind="slow", delay_seconds=0.4)
        started = time.monotonic()
        code, _ = await client.query(out_trade_no=no)
        assert code == 200
        assert time.monotonic() - started >= 0.4


async def test_wechat_tradebill_downloads_gzip_matching_its_hash_with_payment_and_refund_rows(sim: Sim) -> None:
    no = new_no("W")
    async with wechat_client(sim) as client:
        await client.pay(description="mug", out_trade_no=no, amount={"total": 2500})
        sim.control("pay", provider="wechatpay", out_trade_no=no)
        await client.refund(
            out_refund_no=f"{no}-R1", amount={"refund": 500, "total": 2500, "currency": "CNY"}, out_trade_no=no
        )
        day = sim.trade("wechatpay", no)["success_at"][:10]
        code, body = await client.trade_bill(bill_date=day)
        assert code == 200
        bill = json.loads(body)
        code, data = await client.download_bill(bill["download_url"])

    assert code == 200
    text = gzip.decompress(data)
    assert bill["hash_type"] == "SHA1"
    assert hashlib.sha1(text).hexdigest() == bill["hash_value"]
    lines = text.decode().splitlines()
    assert lines[0] == WECHAT_BILL_HEADER
    summary_at = next(i for i, ln in enumerate(lines) if ln.startswith("总交易单数"))
    assert (
        lines[summary_at]
        == "总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额"
    )
    assert all(value.startswith("`") for ln in [*lines[1:summary_at], lines[summary_at + 1]] for value in ln.split(","))
    rows = [dict(zip(lines[0].split(","), (v[1:] for v in ln.split(",")), strict=True)) for ln in lines[1:summary_at]]
    ours = sorted(
        (r["交易状态"], r["应结订单金额"], r["退款金额"], r["商户退款单号"]) for r in rows if r["商户订单号"] == no
    )
    assert ours == [("REFUND", "0.00", "5.00", f"{no}-R1"), ("SUCCESS", "25.00", "0.00", "0")]


async def test_wechat_time_expire_closes_the_unpaid_order(sim: Sim) -> None:
    no = new_no("W")
    expire = (dt.datetime.now(BEIJING) + dt.timedelta(seconds=1)).isoformat(timespec="seconds")
    async with wechat_client(sim) as client:
        code, _ = await client.pay(description="mug", out_trade_no=no, amount={"total": 100}, time_expire=expire)
        assert code == 200
        deadline = time.monotonic() + 5
        while json.loads((await client.query(out_trade_no=no))[1])["trade_state"] != "CLOSED":
            assert time.monotonic() < deadline, "never closed"
            await asyncio.sleep(0.1)

    assert sim.control("pay", provider="wechatpay", out_trade_no=no).status_code == 409


# ------------------------------------------------------------------ keys


def test_keys_are_kept_private_and_reused_and_providers_env_names_them(sim: Sim) -> None:
    for variable in ("ALIPAY_APP_PRIVATE_KEY_FILE", "WECHATPAY_PRIVATE_KEY_FILE", "WECHATPAY_APIV3_KEY_FILE"):
        assert stat.S_IMODE(Path(sim.env[variable]).stat().st_mode) == 0o600, variable
    assert stat.S_IMODE((sim.state / "providers.env").stat().st_mode) == 0o600
    assert len(sim.read("WECHATPAY_APIV3_KEY_FILE")) == 32
    assert re.fullmatch(r"[0-9A-F]{40}", sim.env["WECHATPAY_CERT_SERIAL_NO"])
    assert re.fullmatch(r"PUB_KEY_ID_0114\d{28,}", sim.env["WECHATPAY_PUBLIC_KEY_ID"])
    assert sim.env["ALIPAY_GATEWAY_URL"] == f"{sim.url}/gateway.do"

    kept = sim_keys.load_or_create(sim.state)  # a second start finds them

    assert kept.wechatpay_cert_serial_no == sim.env["WECHATPAY_CERT_SERIAL_NO"]
    assert kept.wechatpay_public_key_id == sim.env["WECHATPAY_PUBLIC_KEY_ID"]
    assert kept.wechatpay_apiv3_key == sim.read("WECHATPAY_APIV3_KEY_FILE")
    assert sim_keys.provider_env(kept, sim.url) == sim.env
