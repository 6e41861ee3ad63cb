"""``python -m llmspell``: the command line, the same as the ``llmspell`` script."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
