"""A protocol-faithful provider simulator: Alipay (open platform ``gateway.do``, RSA2) and WeChat Pay API v3 for
payments, SF Express (丰桥 ``std/service``, msgDigest) and JD Logistics (LOP, md5-salt) for parcels.

One process (``python -m deploy.local.provider_sim --state DIR --port 8070``) that the real clients
(``python-alipay-sdk``, ``wechatpayv3``, the shipping service's carrier clients) talk to as they would to the
providers, changing only configuration: it makes and keeps the keys and credentials in ``DIR``, writes
``DIR/providers.env`` for the payment and shipping services, verifies every request's signature, signs every reply,
notification and push, and serves a cashier page in place of the customer's wallet. Tests steer it through
``/control/`` (pay, abandon, expire, faults, notification modes, bill rows; parcels held or advanced, push modes,
JD token expiry).

One module per provider (:mod:`.alipay`, :mod:`.wechatpay`) implementing :class:`.core.Provider`; one per carrier
(:mod:`.sf`, :mod:`.jd`) over the carrier-neutral parcels and pushes of :mod:`.parcels`; all wired in :mod:`.app`.
"""
