import sys

from nucleiscreen.cli import main

sys.exit(main())
