"""``python -m torchckpt``: the same command line as the ``torchckpt`` console script."""

from .cli import main

if __name__ == "__main__":
    main()
