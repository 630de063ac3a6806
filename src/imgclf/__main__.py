"""Allow `python -m imgclf`."""

from imgclf.cli import main

if __name__ == "__main__":
    main()
