"""``python -m ticketlab`` (and ``accelerate launch -m ticketlab``)."""

import sys

from ticketlab.cli import main

sys.exit(main())
