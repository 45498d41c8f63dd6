"""Allow ``python -m memstack``."""

from memstack.cli.main import entry

if __name__ == "__main__":
    entry()
