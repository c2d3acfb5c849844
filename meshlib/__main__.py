"""``python -m meshlib``: the same command as the ``meshlib`` console script."""

from meshlib._cli import main

main()
