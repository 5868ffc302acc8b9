"""Allow `python -m medseg` (and `torchrun -m medseg`)."""

from medseg.cli.main import main

if __name__ == "__main__":
    main()
