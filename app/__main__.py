import signal
import sys

# As in entrypoint.py: hold the stop signals back until main() handles them.
signal.pthread_sigmask(signal.SIG_BLOCK, (signal.SIGTERM, signal.SIGINT))

from app.cli import main  # noqa: E402

sys.exit(main())
