"""`python -m erdu_tasks.cli`: the same as the `erdu` script."""

from erdu_tasks.cli.main import main

main()
