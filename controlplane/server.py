"""Composition root of ``governor serve``: build the context, start components, run HTTP."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Gauge, Info

from controlplane import __version__
from controlplane.api.auth import TokenAuth
from controlplane.clock import Clock, SystemClock
from controlplane.config import GovernorConfig
from controlplane.errors import GovernorError
from controlplane.store import Store

log = logging.getLogger(__name__)


class Component(Protocol):
    """Something ``serve`` runs beside the API: started once, stopped once."""

    name: str

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def health(self) -> dict[str, Any]: ...


@dataclass
class AppContext:
    config: GovernorConfig
    store: Store
    auth: TokenAuth
    clock: Clock = field(default_factory=SystemClock)
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    components: dict[str, Component] = field(default_factory=dict)
    # Named services that routes use (e.g. the OTLP ingest pipeline), set by builders.
    services: dict[str, Any] = field(default_factory=dict)
    _started: bool = False

    def add(self, component: Component) -> None:
        self.components[component.name] = component

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        for c in self.components.values():
            log.info("starting %s", c.name)
            c.start()

    def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        for c in reversed(list(self.components.values())):
            try:
                c.stop()
            except Exception:  # keep stopping the rest
                log.exception("stopping %s failed", c.name)

    def component_health(self) -> dict[str, Any]:
        return {name: c.health() for name, c in self.components.items()}


# Functions that add components/services to a context; other packages append here via
# ``register_builder`` at import of their ``serve`` integration module.
Builder = Callable[[AppContext], None]
BUILDERS: list[Builder] = []


def register_builder(fn: Builder) -> Builder:
    BUILDERS.append(fn)
    return fn


def build_context(
    config: GovernorConfig,
    store: Store,
    auth: TokenAuth,
    *,
    clock: Clock | None = None,
    builders: list[Builder] | None = None,
) -> AppContext:
    ctx = AppContext(config=config, store=store, auth=auth, clock=clock or SystemClock())
    Info("governor_build", "Governor build information", registry=ctx.registry).info(
        {"version": __version__, "store_driver": store.driver}
    )
    up = Gauge("governor_store_up", "1 if the store answers", registry=ctx.registry)
    up.set_function(lambda: 1.0 if store.status().ok else 0.0)
    for build in builders if builders is not None else default_builders():
        build(ctx)
    return ctx


def default_builders() -> list[Builder]:
    """Builders of every integration installed: imported here so serve wires them all."""
    import controlplane.integrations  # noqa: F401 - registers builders on import

    return list(BUILDERS)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class BindRefused(GovernorError):
    pass


def check_bind(host: str, tokens_configured: bool) -> None:
    if not tokens_configured and not is_loopback(host):
        raise BindRefused(
            f"refusing to listen on {host}: GOVERNOR_API_TOKENS is not set, so the API has "
            "only generated tokens; set GOVERNOR_API_TOKENS (role:token,...) to serve beyond "
            "loopback"
        )
