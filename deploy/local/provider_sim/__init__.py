"""A protocol-faithful payment provider simulator: Alipay (open platform ``gateway.do``, RSA2) and WeChat Pay API v3.

One process (``python -m deploy.local.provider_sim --state DIR --port 8070``) that the real client libraries
(``python-alipay-sdk``, ``wechatpayv3``) talk to as they would to the providers, changing only configuration: it
makes and keeps the key pairs in ``DIR``, writes ``DIR/providers.env`` for the payment service, verifies every
request's signature, signs every reply and notification, and serves a cashier page in place of the customer's
wallet. Tests steer it through ``/control/`` (pay, abandon, expire, faults, notification modes, bill rows).

One module per provider (:mod:`.alipay`, :mod:`.wechatpay`); a carrier (SF Express, JD Logistics) is one more
module beside them that implements :class:`.core.Provider` and is wired in :mod:`.app`.
"""
