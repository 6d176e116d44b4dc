"""An emulated EV fleet for demos, tests and load tests of chargewatch.

``devices`` generates readings (pure, seeded, time passed in), ``modes`` paces them (real time,
accelerated, backfill), ``sender`` posts them to ingest (the only HTTP), ``cli`` is
``chargewatch simulate``.
"""
