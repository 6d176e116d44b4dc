"""The task runner: efficiency windows (embedded mode), alert evaluation and replay, notification
delivery and retention, in one process per data directory (``chargewatch tasks``).

``runner.py`` the runs, ``replay.py`` alert replay over late history, ``notify.py`` webhook and
Alertmanager delivery, ``cli.py`` the command. It works on the ports of
``chargewatch.efficiency_ports``; ``chargewatch.bootstrap`` builds their adapters.
"""
