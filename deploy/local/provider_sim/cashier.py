"""The cashier page: what the customer sees in place of the wallet app, with Pay and Abandon.

Alipay's page/wap pay and scanned QR codes and WeChat Pay's H5 URLs lead here; pressing Pay does what
``POST /control/pay`` does, and then follows Alipay's return_url when the trade has one.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.responses import HTMLResponse, RedirectResponse, Response

from .core import CashierTrade, PayOutcome, Provider, yuan_text

TEMPLATES = Environment(
    loader=FileSystemLoader(Path(__file__).resolve().parent / "templates"), autoescape=select_autoescape()
)
TITLES = {"alipay": "支付宝 收银台 Alipay cashier", "wechatpay": "微信支付 WeChat Pay"}
OUTCOMES = {
    PayOutcome.PAID: ("支付成功", "paid"),
    PayOutcome.ALREADY_PAID: ("订单已支付", "paid already"),
    PayOutcome.DECLINED: ("支付失败", "payment declined: no money moved, the trade still waits for payment"),
    PayOutcome.CLOSED: ("交易已关闭", "trade closed"),
    PayOutcome.NOT_FOUND: ("交易不存在", "no such trade"),
}


def page(trade: CashierTrade) -> HTMLResponse:
    """The cashier for a trade: Pay and Abandon while it waits for payment, its state once it no longer does."""
    detail = "paid" if trade.status in ("TRADE_SUCCESS", "TRADE_FINISHED", "SUCCESS", "REFUND") else "trade closed"
    html = TEMPLATES.get_template("cashier.html").render(
        title=TITLES.get(trade.provider, trade.provider),
        provider=trade.provider,
        trade=trade,
        amount=yuan_text(trade.amount),
        detail=detail,
    )
    return HTMLResponse(html)


def message(title: str, detail: str, *, provider: str = "", status_code: int = 200) -> HTMLResponse:
    html = TEMPLATES.get_template("cashier.html").render(title=title, provider=provider, trade=None, detail=detail)
    return HTMLResponse(html, status_code=status_code)


def router(providers: dict[str, Provider]) -> APIRouter:
    routes = APIRouter(include_in_schema=False)

    def opened(provider: str, cashier_token: str) -> tuple[Provider, CashierTrade] | None:
        p = providers.get(provider)
        trade = p.cashier(cashier_token) if p is not None else None
        return (p, trade) if p is not None and trade is not None else None

    @routes.get("/cashier/{provider}/{cashier_token}")
    async def show(provider: str, cashier_token: str) -> Response:
        found = opened(provider, cashier_token)
        if found is None:
            return message("交易不存在", "no such trade", provider=provider, status_code=404)
        return page(found[1])

    @routes.post("/cashier/{provider}/{cashier_token}/pay")
    async def pay(provider: str, cashier_token: str) -> Response:
        found = opened(provider, cashier_token)
        if found is None:
            return message("交易不存在", "no such trade", provider=provider, status_code=404)
        p, trade = found
        outcome = p.pay(trade.out_trade_no)
        if outcome is PayOutcome.PAID and (target := p.return_url_after_pay(cashier_token)) is not None:
            return RedirectResponse(target, status_code=303)
        title, detail = OUTCOMES[outcome]
        return message(title, detail, provider=provider)

    @routes.post("/cashier/{provider}/{cashier_token}/abandon")
    async def abandon(provider: str, cashier_token: str) -> Response:
        found = opened(provider, cashier_token)
        if found is None:
            return message("交易不存在", "no such trade", provider=provider, status_code=404)
        found[0].abandon(found[1].out_trade_no)
        return message("已放弃支付", "abandoned: the trade stays unpaid until it expires", provider=provider)

    return routes
