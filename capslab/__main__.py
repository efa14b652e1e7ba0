"""``python -m capslab`` (what ``torchrun ... -m capslab train`` runs): the capslab command line."""

from capslab.cli.main import main

if __name__ == "__main__":
    main()
