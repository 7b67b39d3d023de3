"""python -m streamer [--rate R] [--streams K] [--limit N] [--replicas N] [--server managed|external] ...
python -m streamer --index N | --image FILE      (one image through the broker)
python -m streamer --collect-only --run-id ID --state-file F [--limit N] [--server external]
                                                 (resume collecting a run whose streamer died)
python -m streamer report [DIR]                  (show the latest, or the named, report again)
"""

import argparse
import sys


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m streamer", description="Stream Fashion-MNIST through Pub/Sub and report."
    )
    p.add_argument("--config", help="config file (default configs/stream.py)")
    p.add_argument("--rate", type=float, help="images per second; 0 = as fast as possible (default 200)")
    p.add_argument("--streams", type=int, help="ordering keys: image i goes on stream i %% K")
    p.add_argument("--limit", type=int, help="only the first N test images")
    p.add_argument("--content-type", choices=("raw", "png"), help="send raw pixels or PNG files")
    p.add_argument(
        "--server", choices=("managed", "external"), default="managed", help="start the server, or use a running one"
    )
    p.add_argument("--replicas", type=int, help="managed server replicas")
    p.add_argument("--project", help="real GCP project (default: the emulator)")
    p.add_argument("--model", help="model directory for the managed server and the offline check")
    p.add_argument("--topic-suffix", default="", help="suffix on every topic/subscription name")
    p.add_argument("--timeout", type=float, help="seconds to wait for all results")
    p.add_argument("--reports-dir", help="where reports/<timestamp>/ go")
    p.add_argument("--state-file", help="persist collector progress here (resumable collector)")
    p.add_argument("--run-id", help="request-id prefix (resume a collector with the same run id)")
    p.add_argument(
        "--collect-only",
        action="store_true",
        help="publish nothing: collect the results of run --run-id (resuming from --state-file) and report",
    )
    p.add_argument("--no-verify", dest="verify", action="store_false", help="skip the offline comparison")
    p.add_argument("--index", type=int, help="send test image N and print its prediction")
    p.add_argument("--image", help="send this PNG/JPEG and print its prediction")
    return p.parse_args(argv)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["report"]:
        from streamer.report import show_report

        try:
            print(show_report(argv[1] if len(argv) > 1 else None))
        except FileNotFoundError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        return 0
    from streamer.run import main as run_main

    return run_main(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
