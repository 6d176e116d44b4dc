"""chargewatch: watch the charging efficiency of an EV fleet."""

__version__ = "0.1.0"
