"""``slo_hour_state.cols``: the saved hours' columns, so a start reuses those it still reads.

m0007's rows were found by one signature over the table's whole column set: changing one
SLO's threshold made the next start read 30 days of every column of that table again.
Rows now carry each column's own signature (``controlplane/slo/hour_state.py``); a start
takes the columns its SLOs still read and reads only the new ones. Rows written before
this migration have no columns listed (and another table signature), so they are not
used: the first start after it reads the hours once, as after m0007.
"""

from __future__ import annotations

STATEMENTS: list[str] = [
    "ALTER TABLE slo_hour_state ADD COLUMN IF NOT EXISTS cols Array(LowCardinality(String))"
    " AFTER requests",
]
