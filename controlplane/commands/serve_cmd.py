"""``governor serve``: API, OTLP receiver, scrape loop and scheduler in one process."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from controlplane import conventions as cv
from controlplane.config import GovernorConfig, load_config


def register(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the API, receivers, scrapers and SLO evaluation")
    p.add_argument("--config", help="governor.yaml (defaults apply without one)")
    p.add_argument("--host", default=None, help="bind address (default from config, 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default from config, 8080)")
    p.add_argument("--data-dir", default=None, help="embedded store directory")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from controlplane.api.app import create_app
    from controlplane.api.auth import TokenAuth
    from controlplane.server import build_context, check_bind
    from controlplane.store import open_store

    cfg = load_config(args.config) if args.config else GovernorConfig()
    host = args.host or cfg.server.host
    port = args.port or cfg.server.port
    spec = os.environ.get(cv.ENV_API_TOKENS)
    check_bind(host, tokens_configured=bool(spec))
    if spec:
        auth = TokenAuth.parse(spec)
        generated: dict[str, str] = {}
    else:
        auth, generated = TokenAuth.generated()
    store = open_store(cfg.store, data_dir=args.data_dir)
    try:
        ctx = build_context(cfg, store, auth)
        app = create_app(ctx)
        where = f"http://{host}:{port}"
        print(f"governor serving on {where} (store: {store.status().detail or store.driver})")
        if generated:
            print(f"{cv.ENV_API_TOKENS} is not set: loopback only, tokens for this run:")
            for role, token in generated.items():
                print(f"  {role}: {token}")
        sys.stdout.flush()
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        store.close()
    return 0
