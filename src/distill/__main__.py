"""``python -m distill`` (and ``accelerate launch -m distill``) is the ``distill`` command."""
import sys

from distill.cli import main

sys.exit(main())
