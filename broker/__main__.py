"""python -m broker check | emulator [--port P]

check      exit 0 if Google's Pub/Sub emulator (and Java) can be started here, else one line saying how to fix it.
emulator   run an emulator in the foreground (Ctrl-C stops it and its Java process).
"""

import argparse
import signal
import sys
import threading

from broker.emulator import Emulator, find_launcher
from broker.errors import BrokerError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m broker", description="Google's Pub/Sub emulator, here.")
    parser.add_argument("command", nargs="?", default="check", choices=("check", "emulator"))
    parser.add_argument("--port", type=int, help="emulator port (default: a free one)")
    args = parser.parse_args(argv)
    try:
        if args.command == "check":
            print(f"Pub/Sub emulator: {find_launcher()}")
            return 0
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        with Emulator(port=args.port) as emulator:
            print(f"export PUBSUB_EMULATOR_HOST={emulator.host}", flush=True)
            print(f"# its log: {emulator.log_path} (removed when it stops)", flush=True)
            stop.wait()
        return 0
    except BrokerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
