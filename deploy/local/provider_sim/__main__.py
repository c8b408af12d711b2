"""``python -m deploy.local.provider_sim --state DIR --port 8070`` (from the repository root)."""

from __future__ import annotations

import argparse
import ipaddress
import os
from pathlib import Path

from .app import Settings, run
from .control import LOOPBACK


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m deploy.local.provider_sim", description=__doc__)
    parser.add_argument("--state", type=Path, required=True, help="where the keys and providers.env are kept")
    parser.add_argument("--port", type=int, default=8070)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--public-url", help="base URL in providers.env and replies (default: the URL called)")
    parser.add_argument("--time-scale", type=float, default=0.01, help="multiplies retry delays (default 0.01)")
    parser.add_argument(
        "--parcel-time-scale",
        type=float,
        default=1.0,
        help="multiplies the parcels' schedule (picked up 2 s .. delivered 10 s) and push retry delays (default 1.0)",
    )
    parser.add_argument(
        "--sf-push-url",
        default=os.environ.get("PROVIDER_SIM_SF_PUSH_URL") or None,
        help="SF Express's registered route-push URL (env PROVIDER_SIM_SF_PUSH_URL; none: no pushes)",
    )
    parser.add_argument(
        "--jd-push-url",
        default=os.environ.get("PROVIDER_SIM_JD_PUSH_URL") or None,
        help="JD Logistics' registered tracking-push URL (env PROVIDER_SIM_JD_PUSH_URL; none: no pushes)",
    )
    parser.add_argument(
        "--control-allow",
        action="append",
        type=ipaddress.ip_network,
        help="a network allowed to call /control/ besides loopback (repeatable; e.g. a compose network)",
    )
    args = parser.parse_args(argv)
    if args.parcel_time_scale < 0:
        parser.error("--parcel-time-scale must not be negative")
    run(
        Settings(
            state=args.state.resolve(),
            host=args.host,
            port=args.port,
            public_url=args.public_url,
            time_scale=args.time_scale,
            parcel_time_scale=args.parcel_time_scale,
            sf_push_url=args.sf_push_url,
            jd_push_url=args.jd_push_url,
            control_allow=(*LOOPBACK, *(args.control_allow or [])),
            # docker-compose fixes these so that the payment service can be given them in its environment.
            wechatpay_cert_serial_no=os.environ.get("PROVIDER_SIM_WECHATPAY_CERT_SERIAL_NO") or None,
            wechatpay_public_key_id=os.environ.get("PROVIDER_SIM_WECHATPAY_PUBLIC_KEY_ID") or None,
            jd_access_token=os.environ.get("PROVIDER_SIM_JD_ACCESS_TOKEN") or None,
        )
    )


if __name__ == "__main__":
    main()
