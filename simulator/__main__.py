"""``python -m simulator MODE ...``: the same as ``chargewatch simulate MODE ...``."""

import argparse
import logging
import sys

from simulator.cli import configure

parser = argparse.ArgumentParser(prog="python -m simulator",
                                 description="Emulate a fleet posting to chargewatch ingest.")
configure(parser)
arguments = parser.parse_args()
logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
sys.exit(arguments.func(arguments))
