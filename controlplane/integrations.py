"""Imports every module that plugs components into ``governor serve``.

Each imported module calls ``controlplane.server.register_builder`` at import time.
Add one import line per integration; keep this file free of logic.
"""

from __future__ import annotations

import controlplane.alerting  # noqa: F401  alert engine (before SLOs, which feed it)
import controlplane.ingest  # noqa: F401  OTLP/HTTP receiver -> span mapping -> writer
import controlplane.scraping  # noqa: F401  scrape loop -> writer; target health for the policy
import controlplane.slo.scheduler  # noqa: F401  SLO evaluation job (apscheduler)
import controlplane.store.compaction  # noqa: F401  hourly rollups merged, a part a month
