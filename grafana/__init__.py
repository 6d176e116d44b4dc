"""Grafana for the bundle: provisioning files, and the dashboards and alert rules as code.

``python -m grafana.generate`` rebuilds ``grafana/dashboards/*.json`` and
``grafana/provisioning/alerting/rules.yaml`` from ``grafana/queries.py`` (every Flux query),
``grafana/panels.py`` (dashboards, built with grafana-foundation-sdk) and ``grafana/alerting.py``
(the rule group). The generated files are committed; a test fails when they are stale.
"""
