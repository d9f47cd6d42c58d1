"""`python -m colm.cli ...` runs the `colm` command."""
import sys

from colm.cli import main

sys.exit(main())
