"""python -m broker check | emulator [--port P]

check      exit 0 if Google's Pub/Sub emulator (and Java) can be started here, else one line saying how to fix it.
emulator   run an emulator in the foreground (Ctrl-C stops it and its Java process).
"""

import signal
import sys
import threading

from broker.emulator import Emulator, find_launcher
from broker.errors import BrokerError


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "check"
    try:
        if command == "check":
            print(f"Pub/Sub emulator: {find_launcher()}")
            return 0
        if command == "emulator":
            port = int(argv[argv.index("--port") + 1]) if "--port" in argv else None
            stop = threading.Event()
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: stop.set())
            with Emulator(port=port) as emulator:
                print(f"export PUBSUB_EMULATOR_HOST={emulator.host}", flush=True)
                stop.wait()
            return 0
    except BrokerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
