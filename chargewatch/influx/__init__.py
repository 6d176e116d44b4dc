"""InfluxDB mode: the forwarder that ships the outbox, and the InfluxDB setup."""
