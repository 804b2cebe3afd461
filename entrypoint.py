"""Entry point of the SageMaker Processing job; see `python3 entrypoint.py --help`."""

import signal
import sys

# Hold SIGTERM and SIGINT back while the app is imported. main() installs its
# handlers and then lets them through, so an early stop is still reported.
signal.pthread_sigmask(signal.SIG_BLOCK, (signal.SIGTERM, signal.SIGINT))

from app import main  # noqa: E402  (imported after the signals are held back)

if __name__ == "__main__":
    sys.exit(main())
