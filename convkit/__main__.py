"""``python -m convkit`` (and ``torchrun -m convkit``): the command line."""

from .cli.main import main

if __name__ == "__main__":
    main()
