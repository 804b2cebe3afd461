"""Entry point of the SageMaker Processing job; see `python3 entrypoint.py --help`."""

import sys

from app import main

if __name__ == "__main__":
    sys.exit(main())
