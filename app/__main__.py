"""``python -m app``: the command line."""
import sys

from .process import stop_signals

stop_signals.hold()  # first, before the imports that take most of a start

from .cli import main  # noqa: E402

sys.exit(main())
