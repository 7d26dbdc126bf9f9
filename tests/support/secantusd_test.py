"""SecantusDB for the test suite: the server `secantusd-py` runs, without its TTL monitor.

The TTL monitor deletes documents whose expiry has passed by the REAL clock. Tests run on a
frozen clock set in the past, so it would delete a test's fresh sessions or login throttles
whenever its 60-second sweep fell inside that test (a staff page then redirected to sign-in at
random). `secantusd-py` has no flag for the sweep interval, so this starts the same server class
with the sweep off. Nothing relies on it: expiry is checked in code against the service clock;
the TTL indexes only tidy up.

    python -m tests.support.secantusd_test --port PORT
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from types import FrameType

from secantus.server import SecantusDBServer


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server = SecantusDBServer(host="127.0.0.1", port=args.port, storage_path=":memory:", ttl_sweep_seconds=0)

    def stop(signum: int, frame: FrameType | None) -> None:
        server.stop()
        sys.exit(0)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    server.start()
    server.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
