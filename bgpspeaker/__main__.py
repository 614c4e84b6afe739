"""`python -m bgpspeaker` is the same as the `bgpspeaker` console script."""

from bgpspeaker.cli import main

raise SystemExit(main())
